// Text formats of the page: sizes, durations, clock times, file names and audio formats, and the
// SRT and VTT files of a verbose_json answer, written by the rules of the command line's writers
// (salmonn/writers.py), so a download is byte for byte `salmonn transcribe -f srt|vtt`.

export const MIME_FORMATS = {
  webm: "webm", ogg: "ogg", mp4: "m4a", mpeg: "mp3", wav: "wav", "x-wav": "wav", flac: "flac",
};

export function megabytes(bytes) {
  return (bytes / 1e6).toFixed(1) + " MB";
}

export function duration(seconds) {
  if (seconds >= 3600) return (seconds / 3600).toFixed(seconds % 3600 ? 1 : 0) + " h";
  if (seconds >= 60) return (seconds / 60).toFixed(seconds % 60 ? 1 : 0) + " min";
  return seconds + " s";
}

export function clock(seconds) {
  const whole = Math.max(0, Math.floor(seconds));
  const tenth = Math.floor((seconds - whole) * 10);
  const two = (n) => String(n).padStart(2, "0");
  return `${two(Math.floor(whole / 60))}:${two(whole % 60)}.${tenth}`;
}

export function extension(name) {
  const dot = name.lastIndexOf(".");
  return dot > 0 ? name.slice(dot + 1).toLowerCase() : "";
}

export function stem(name) {
  const dot = name.lastIndexOf(".");
  return (dot > 0 ? name.slice(0, dot) : name) || "audio";
}

// The format name the API wants for input_audio: the file's extension when the server knows it,
// else one from the MIME type, else the extension (the server then names the problem).
export function formatOf(audio, known) {
  const ext = extension(audio.name);
  if (known.includes(ext)) return ext;
  const subtype = (audio.blob.type || "").split(";")[0].split("/")[1] || "";
  return MIME_FORMATS[subtype] || ext || "bin";
}

export function recordingName(type) {
  const subtype = (type || "").split(";")[0].split("/")[1] || "webm";
  return "recording." + (MIME_FORMATS[subtype] || "webm");
}

// -- subtitles ----------------------------------------------------------------------------------
const CONTROL = /[\x00-\x08\x0b-\x1f\x7f-\x9f]/g;
const SPACE =
  "\\t\\n\\x0b\\x0c\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
const EDGES = new RegExp(`^[${SPACE}]+|[${SPACE}]+$`, "g"); // what Python's str.strip() strips

const strip = (text) => text.replace(EDGES, "");
const printable = (text) =>
  String(text).replace(/\r\n/g, "\n").replace(/\r/g, "\n").replace(CONTROL, "");

function cueText(text) {
  const lines = strip(printable(text)).split(/[\n\u2028\u2029]/).map(strip).filter(Boolean);
  return lines.join("\n").replaceAll("-->", "->");
}

function cues(record) {
  let segments = record.segments || [];
  if (!segments.length && record.text && record.duration != null) {
    segments = [{ start: 0, end: record.duration, text: record.text }];
  }
  return segments.filter((s) => strip(printable(s.text)));
}

function cueClock(seconds, mark) {
  let ms = Math.max(0, Math.floor(Number(seconds) * 1000 + 0.5)); // halves round up, as the CLI
  const hours = Math.floor(ms / 3600000);
  ms -= hours * 3600000;
  const minutes = Math.floor(ms / 60000);
  ms -= minutes * 60000;
  const secs = Math.floor(ms / 1000);
  ms -= secs * 1000;
  const two = (n) => String(n).padStart(2, "0");
  return `${two(hours)}:${two(minutes)}:${two(secs)}${mark}${String(ms).padStart(3, "0")}`;
}

export function srt(record) {
  return cues(record)
    .map((s, i) => `${i + 1}\n${cueClock(s.start, ",")} --> ${cueClock(s.end, ",")}\n${cueText(s.text)}\n\n`)
    .join("");
}

export function vtt(record) {
  const escape = (text) =>
    text.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;");
  const body = cues(record)
    .map((s, i) => `${i + 1}\n${cueClock(s.start, ".")} --> ${cueClock(s.end, ".")}\n${escape(cueText(s.text))}\n\n`)
    .join("");
  return "WEBVTT\n\n" + body;
}
