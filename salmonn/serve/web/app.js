// The SALMONN page: plain JavaScript modules, no framework, no build step.
// It talks only to this server: GET /web/info (limits, defaults, task prompts), GET /v1/models,
// POST /v1/audio/transcriptions and /v1/audio/translations (verbose_json), and
// POST /v1/chat/completions with stream: true. Model output is only ever written as text.
import {
  ApiError, authHeaders, base64Of, errorOf, forgetKey, getJSON, readEvents, storeKey, storedKey,
  wordsFor,
} from "./api.js";
import { clock, duration, formatOf, megabytes, recordingName, srt, stem, vtt } from "./formats.js";
import { canRecord, startRecording } from "./recorder.js";

const $ = (id) => document.getElementById(id);
const state = {
  info: null,
  model: null,
  audio: null, // {blob, name}
  playerUrl: null,
  downloadUrls: [],
  controller: null,
  recording: null,
  timer: null,
};

// -- messages --------------------------------------------------------------------------------
function showError(message) {
  const node = $("error");
  node.textContent = message;
  node.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function setStatus(text) {
  $("status").textContent = text;
}

// -- the server: info, model, key ------------------------------------------------------------
async function loadInfo() {
  const info = await getJSON("/web/info");
  state.info = info;
  $("limits").textContent =
    `uploads up to ${megabytes(info.max_upload_bytes)}, audio up to ${duration(info.max_audio_seconds)}`;
  const d = info.decoding;
  $("beams").placeholder = String(d.num_beams);
  $("max-tokens").placeholder = String(d.max_tokens);
  $("temperature").placeholder = d.do_sample ? `${d.temperature} (sampling)` : "0 (no sampling)";
  const language = $("language");
  const names = info.translate_languages;
  for (const code of info.transcribe_languages) {
    language.append(new Option(`${names[code] || code} (${code})`, code));
  }
  const target = $("target");
  for (const [code, name] of Object.entries(info.translate_languages)) {
    const trained = info.trained_translation.includes(code) ? ", trained" : "";
    target.append(new Option(`${name} (${code}${trained})`, code, false, code === "zh"));
  }
}

function dropKey() {
  forgetKey();
  $("forget-key").hidden = true;
}

function askKey(message) {
  $("key-panel").hidden = false;
  const error = $("key-error");
  error.textContent = message || "";
  error.hidden = !message;
  $("model-name").textContent = "API key needed";
  $("api-key").focus();
}

async function loadModel() {
  let body;
  try {
    body = await getJSON("/v1/models");
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) throw err;
    dropKey();
    askKey(err.message);
    return false;
  }
  state.model = body.data && body.data.length ? body.data[0].id : null;
  $("model-name").textContent = "model " + (state.model || "(unnamed)");
  $("key-panel").hidden = true;
  $("forget-key").hidden = !storedKey();
  return true;
}

async function saveKey(event) {
  event.preventDefault();
  const key = $("api-key").value.trim();
  if (!key) {
    askKey("Enter the key the server was started with (--api-key).");
    return;
  }
  try {
    storeKey(key);
  } catch (err) {
    askKey("This browser does not let the page keep the key (storage is off).");
    return;
  }
  $("api-key").value = "";
  try {
    await loadModel();
  } catch (err) {
    askKey(wordsFor(err));
  }
}

// -- audio: a file, a drop, the microphone ---------------------------------------------------
function setAudio(blob, name) {
  if (state.playerUrl) URL.revokeObjectURL(state.playerUrl);
  state.audio = { blob, name };
  state.playerUrl = URL.createObjectURL(blob);
  const player = $("player");
  player.src = state.playerUrl;
  player.hidden = false;
  $("source").textContent = `${name} (${megabytes(blob.size)})`;
  clearError();
  const limit = state.info && state.info.max_upload_bytes;
  if (limit && blob.size > limit) showError(tooLarge(blob, name, limit));
}

function tooLarge(blob, name, limit) {
  return `${name} is ${megabytes(blob.size)}, over the server's upload limit of ${megabytes(limit)}.`;
}

function chooseFile() {
  const file = $("audio-file").files[0];
  if (file) setAudio(file, file.name);
}

function dropFile(event) {
  event.preventDefault();
  $("audio-box").classList.remove("dragging");
  const file = event.dataTransfer && event.dataTransfer.files[0];
  if (file) {
    $("audio-file").value = "";
    setAudio(file, file.name);
  }
}

// -- the microphone ------------------------------------------------------------------------------
function showRecording(on) {
  const button = $("record");
  button.textContent = on ? "Stop recording" : "Record";
  button.setAttribute("aria-pressed", on ? "true" : "false");
  button.classList.toggle("recording", on);
}

async function toggleRecording() {
  if (state.recording) {
    await stopRecording();
    return;
  }
  if (!canRecord()) {
    showError(
      "This browser cannot record here: recording needs the page on localhost or https, " +
        "and a browser with MediaRecorder.",
    );
    return;
  }
  try {
    state.recording = await startRecording();
  } catch (err) {
    showError("No microphone could be opened: " + (err.message || err.name));
    return;
  }
  const started = state.recording.started;
  showRecording(true);
  clearError();
  setStatus("Recording… 0 s");
  state.recordTimer = setInterval(() => {
    setStatus(`Recording… ${Math.floor((Date.now() - started) / 1000)} s`);
  }, 500);
}

async function stopRecording() {
  const recording = state.recording;
  state.recording = null;
  clearInterval(state.recordTimer);
  showRecording(false);
  const blob = await recording.stop();
  if (!blob.size) {
    showError("The recording is empty: the microphone sent no sound.");
    setStatus("");
    return;
  }
  $("audio-file").value = "";
  setAudio(blob, recordingName(blob.type));
  setStatus(`Recorded ${((Date.now() - recording.started) / 1000).toFixed(1)} s.`);
}

// -- the task controls -----------------------------------------------------------------------
const QUESTION_TEXT = {
  ask: ["Question", "Asked about the audio, as salmonn ask FILE QUESTION."],
  reason: [
    "Question (optional)",
    "Empty: the answer is to the speaker's spoken question, using the background sound.",
  ],
  prompt: [
    "Instruction",
    "Sent as it is, as salmonn prompt --text; <SpeechHere> places the audio, else it comes " +
      "first. Without audio, the language model answers the text alone.",
  ],
};

function showTaskFields() {
  const task = $("task").value;
  for (const node of document.querySelectorAll("[data-for-task]")) {
    node.hidden = !node.dataset.forTask.split(" ").includes(task);
  }
  if (QUESTION_TEXT[task]) {
    $("question-label").textContent = QUESTION_TEXT[task][0];
    $("question-hint").textContent = QUESTION_TEXT[task][1];
  }
}

function decoding() {
  const out = {};
  const beams = $("beams").value.trim();
  const tokens = $("max-tokens").value.trim();
  const temperature = $("temperature").value.trim();
  if (beams) out.num_beams = Number(beams);
  if (tokens) out.max_tokens = Number(tokens);
  if (temperature) out.temperature = Number(temperature);
  for (const [name, value] of Object.entries(out)) {
    if (!Number.isFinite(value)) throw new Error(`${name.replace("_", " ")} must be a number`);
  }
  return out;
}

function instruction(task) {
  const prompts = state.info.tasks;
  const question = $("question").value.trim();
  if (task === "prompt") return question;
  if (task === "ask") return prompts.ask.replace("{question}", () => question);
  if (task === "reason" && question) {
    return prompts["reason.question"].replace("{question}", () => question);
  }
  if (task === "caption" && $("music").checked) return prompts["caption.music"];
  return prompts[task];
}

function problem(task) {
  if (!state.info) return "The page could not read the server's settings; reload it.";
  if (!state.audio && task !== "prompt") {
    return "Choose an audio file or record one first.";
  }
  if ((task === "ask" || task === "prompt") && !$("question").value.trim()) {
    return task === "ask" ? "Type a question first." : "Type an instruction first.";
  }
  const limit = state.info.max_upload_bytes;
  if (state.audio && state.audio.blob.size > limit) {
    return tooLarge(state.audio.blob, state.audio.name, limit);
  }
  return null;
}

// -- running a request -----------------------------------------------------------------------
function setBusy(busy) {
  $("run").disabled = busy;
  $("cancel").hidden = !busy;
  $("answer").setAttribute("aria-busy", busy ? "true" : "false");
  clearInterval(state.timer);
  if (busy) {
    const started = Date.now();
    setStatus("Working…");
    state.timer = setInterval(() => {
      setStatus(`Working… ${Math.floor((Date.now() - started) / 1000)} s`);
    }, 1000);
  }
}

function clearResult() {
  clearError();
  $("answer").replaceChildren();
  $("segments").replaceChildren();
  $("extra").hidden = true;
  for (const url of state.downloadUrls) URL.revokeObjectURL(url);
  state.downloadUrls = [];
}

async function run(event) {
  if (event) event.preventDefault();
  if (state.controller) return;
  if (state.recording) await stopRecording();
  const task = $("task").value;
  clearResult();
  if (state.info && state.info.api_key_required && !storedKey()) {
    askKey("Enter the API key first.");
    return;
  }
  const trouble = problem(task);
  if (trouble) {
    showError(trouble);
    return;
  }
  let settings;
  try {
    settings = decoding();
  } catch (err) {
    showError(err.message);
    return;
  }
  state.controller = new AbortController();
  setBusy(true);
  const started = Date.now();
  let finish = null;
  try {
    if (task === "transcribe" || task === "translate") {
      await runAudioTask(task, settings, state.controller.signal);
    } else {
      finish = await runChat(task, settings, state.controller.signal);
    }
    const seconds = ((Date.now() - started) / 1000).toFixed(1);
    const cut = finish === "length" ? "; stopped at the token limit (Max tokens)" : "";
    setBusy(false);
    setStatus(`Done in ${seconds} s${cut}.`);
  } catch (err) {
    setBusy(false);
    if (err.name === "AbortError") {
      setStatus("Cancelled.");
    } else {
      setStatus("");
      if (err instanceof ApiError && err.status === 401) {
        dropKey();
        askKey(err.message);
      }
      showError(wordsFor(err));
    }
  } finally {
    state.controller = null;
  }
}

async function runAudioTask(task, settings, signal) {
  const form = new FormData();
  form.append("file", state.audio.blob, state.audio.name);
  if (state.model) form.append("model", state.model);
  form.append("response_format", "verbose_json");
  if (task === "transcribe") form.append("language", $("language").value);
  else form.append("to_language", $("target").value);
  for (const [name, value] of Object.entries(settings)) form.append(name, String(value));
  const url = task === "transcribe" ? "/v1/audio/transcriptions" : "/v1/audio/translations";
  const response = await fetch(url, { method: "POST", headers: authHeaders(), body: form, signal });
  if (!response.ok) throw await errorOf(response);
  const body = await response.json();
  $("answer").textContent = body.text;
  showSegments(body);
}

async function runChat(task, settings, signal) {
  const content = [{ type: "text", text: instruction(task) }];
  if (state.audio) {
    const data = await base64Of(state.audio.blob);
    const format = formatOf(state.audio, state.info.formats);
    content.push({ type: "input_audio", input_audio: { data, format } });
  }
  const body = Object.assign({ messages: [{ role: "user", content }], stream: true }, settings);
  if (state.model) body.model = state.model;
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: authHeaders({ "Content-Type": "application/json" }),
    body: JSON.stringify(body),
    signal,
  });
  if (!response.ok) throw await errorOf(response);
  const answer = $("answer");
  return readEvents(response, (text) => answer.append(text)); // a text node, never HTML
}

function setDownload(id, text, type, name) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  state.downloadUrls.push(url);
  const link = $(id);
  link.href = url;
  link.download = name;
}

function showSegments(body) {
  const list = $("segments");
  for (const seg of body.segments || []) {
    const item = document.createElement("li");
    const time = document.createElement("button");
    time.type = "button";
    time.className = "time";
    time.textContent = `${clock(seg.start)}–${clock(seg.end)}`;
    time.setAttribute("aria-label", `Play from ${clock(seg.start)}`);
    time.addEventListener("click", () => {
      const player = $("player");
      player.currentTime = seg.start;
      player.play().catch(() => {});
    });
    const text = document.createElement("span");
    text.textContent = seg.text;
    item.append(time, text);
    list.append(item);
  }
  const name = stem(state.audio.name);
  setDownload("download-srt", srt(body), "application/x-subrip", name + ".srt");
  setDownload("download-vtt", vtt(body), "text/vtt", name + ".vtt");
  setDownload("download-json", JSON.stringify(body, null, 2) + "\n", "application/json", name + ".json");
  $("extra").hidden = false;
}

// -- start -----------------------------------------------------------------------------------
function wire() {
  $("task-form").addEventListener("submit", run);
  $("key-form").addEventListener("submit", saveKey);
  $("forget-key").addEventListener("click", () => {
    dropKey();
    if (state.info && state.info.api_key_required) askKey("");
  });
  $("cancel").addEventListener("click", () => state.controller && state.controller.abort());
  $("audio-file").addEventListener("change", chooseFile);
  $("record").addEventListener("click", toggleRecording);
  $("task").addEventListener("change", showTaskFields);
  $("question").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) run(event);
  });
  const box = $("audio-box");
  box.addEventListener("dragover", (event) => {
    event.preventDefault();
    box.classList.add("dragging");
  });
  box.addEventListener("dragleave", () => box.classList.remove("dragging"));
  box.addEventListener("drop", dropFile);
  showTaskFields();
}

async function start() {
  wire();
  try {
    await loadInfo();
    if (state.info.api_key_required && !storedKey()) {
      askKey("");
      return;
    }
    await loadModel();
  } catch (err) {
    $("model-name").textContent = "not connected";
    showError(wordsFor(err));
  }
}

start();
