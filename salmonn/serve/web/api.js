// Talking to this server: the API key of the tab, errors in the server's words, the answer stream.
// Nothing here touches the page; app.js does.

const KEY_STORE = "salmonn.apiKey"; // sessionStorage: this tab only, gone when it closes

export class ApiError extends Error {
  constructor(message, status, retryAfter) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

export function storedKey() {
  try {
    return sessionStorage.getItem(KEY_STORE);
  } catch (err) {
    return null;
  }
}

export function storeKey(key) {
  sessionStorage.setItem(KEY_STORE, key); // throws when storage is off
}

export function forgetKey() {
  try {
    sessionStorage.removeItem(KEY_STORE);
  } catch (err) {
    /* storage off: nothing was kept */
  }
}

export function authHeaders(extra) {
  const headers = Object.assign({}, extra || {});
  const key = storedKey();
  if (key) headers.Authorization = "Bearer " + key;
  return headers;
}

// An ApiError holding the server's message ({"error": {"message": ...}}), else the status line.
export async function errorOf(response) {
  let text = "";
  try {
    text = await response.text();
  } catch (err) {
    /* no body */
  }
  let message = "";
  try {
    const body = JSON.parse(text);
    message = body && body.error && body.error.message;
  } catch (err) {
    /* not JSON */
  }
  message = message || `The server answered ${response.status} ${response.statusText}`.trim();
  return new ApiError(message, response.status, response.headers.get("Retry-After"));
}

export function wordsFor(err) {
  if (err instanceof ApiError && err.status === 503 && err.retryAfter) {
    return `${err.message} (try again in ${err.retryAfter} s)`;
  }
  if (err instanceof ApiError) return err.message;
  if (err instanceof TypeError) return "The server cannot be reached: " + err.message;
  return String(err.message || err);
}

export async function getJSON(url) {
  const response = await fetch(url, { headers: authHeaders(), cache: "no-store" });
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

export function base64Of(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1] || "");
    reader.onerror = () => reject(new Error("the audio could not be read: " + reader.error));
    reader.readAsDataURL(blob);
  });
}

// Read a chat completion's server-sent events: onText(delta) for each piece of the answer;
// resolves to the finish reason. An error event (the server's error object) throws.
export async function readEvents(response, onText) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let finish = null;
  for (;;) {
    const { value, done } = await reader.read();
    buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return finish;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new ApiError(chunk.error.message, 0, null);
        for (const choice of chunk.choices || []) {
          if (choice.delta && choice.delta.content) onText(choice.delta.content);
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
    }
    if (done) throw new Error("The answer stream ended before the server finished it.");
  }
}
