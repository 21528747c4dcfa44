// The microphone: MediaRecorder over getUserMedia. Browsers allow it only in a secure context
// (localhost, 127.0.0.1 or https).

export function canRecord() {
  return Boolean(navigator.mediaDevices && navigator.mediaDevices.getUserMedia && window.MediaRecorder);
}

// Start recording; resolves to {stop, started} once the microphone is open. stop() resolves to
// the recording as a Blob (its type the recorder's, e.g. audio/webm;codecs=opus).
export async function startRecording() {
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  const recorder = new MediaRecorder(stream);
  const parts = [];
  recorder.addEventListener("dataavailable", (event) => {
    if (event.data && event.data.size) parts.push(event.data);
  });
  const stopped = new Promise((resolve) => {
    recorder.addEventListener("stop", () => {
      for (const track of stream.getTracks()) track.stop();
      const type = recorder.mimeType || (parts[0] && parts[0].type) || "audio/webm";
      resolve(new Blob(parts, { type }));
    });
  });
  recorder.start(250);
  return {
    started: Date.now(),
    stop() {
      if (recorder.state !== "inactive") recorder.stop();
      return stopped;
    },
  };
}
