// The kiosk page: microphone -> 16 kHz PCM16 appends, answer deltas -> a gapless playback queue, the
// transcript, the session's state and the last turn's latency. Protocol: docs/protocol.md. No build step.
"use strict";

const $ = (id) => document.getElementById(id);
const OUT_RATE = 24000;
const START_DELAY = 0.05; // seconds of queue before the first piece plays (absorbs network jitter)

const kiosk = {
  state: "connecting",
  mode: "hands-free",
  responses: 0,
  audioDeltas: 0,
  scheduledSamples: 0,
  playedPieces: 0,
  stoppedPlayback: 0,
  lastTimings: null,
  transcript: [],
  errors: [],
};
window.kiosk = kiosk; // for tests and for a look from the browser console

let ws = null;
let ctx = null;
let talking = false; // push-to-talk button held
let current = null; // {id, entry, textNode} of the answer being received
let ignored = new Set(); // response ids stopped by a barge-in or cancel: their late audio is dropped
let sources = [];
let nextTime = 0;
let retryMs = 1000;

// ----- playback: pieces back to back, stopped at once on barge-in -----

function b64ToInt16(b64) {
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new Int16Array(bytes.buffer);
}

function int16ToB64(pcm) {
  const bytes = new Uint8Array(pcm.buffer);
  let bin = "";
  for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(bin);
}

function play(pcm) {
  const buffer = ctx.createBuffer(1, pcm.length, OUT_RATE);
  const data = buffer.getChannelData(0);
  for (let i = 0; i < pcm.length; i++) data[i] = pcm[i] / 32768;
  const source = ctx.createBufferSource();
  source.buffer = buffer;
  source.connect(ctx.destination);
  nextTime = Math.max(nextTime, ctx.currentTime + (sources.length ? 0 : START_DELAY));
  source.start(nextTime);
  nextTime += buffer.duration;
  sources.push(source);
  source.onended = () => {
    sources = sources.filter((s) => s !== source);
    kiosk.playedPieces++;
  };
  kiosk.scheduledSamples += pcm.length;
}

function stopPlayback() {
  if (sources.length) kiosk.stoppedPlayback++;
  for (const s of sources) {
    s.onended = null;
    try { s.stop(); } catch (e) { /* not started yet */ }
  }
  sources = [];
  nextTime = 0;
}

// ----- transcript, state, latency -----

function addEntry(who, text) {
  const entry = document.createElement("div");
  entry.className = `turn ${who}`;
  const body = document.createElement("span");
  body.textContent = text;
  entry.appendChild(body);
  $("transcript").appendChild(entry);
  $("transcript").scrollTop = $("transcript").scrollHeight;
  const item = { who, text };
  kiosk.transcript.push(item);
  return { entry, body, item };
}

function tag(entry, text) {
  const t = document.createElement("span");
  t.className = "tag";
  t.textContent = text;
  entry.appendChild(t);
}

function setState(state) {
  kiosk.state = state;
  const el = $("state");
  el.textContent = state;
  el.className = `state ${state}`;
}

function notice(text) {
  $("notice").textContent = text;
}

function showLatency(t) {
  kiosk.lastTimings = t;
  if (t.first_audio_ms == null) {
    $("latency").textContent = t.first_text_ms == null ? "last turn: no answer"
      : `last turn: first text ${Math.round(t.first_text_ms)} ms after you stopped`;
    return;
  }
  $("latency").textContent = `last turn: answer began ${Math.round(t.felt_first_audio_ms)} ms after you stopped `
    + `speaking (pause detection ${Math.round(t.vad_hangover_ms)} ms + ${Math.round(t.first_audio_ms)} ms)`;
}

// ----- protocol -----

function send(event) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(event));
}

function onEvent(ev) {
  switch (ev.type) {
    case "session.created":
      retryMs = 1000;
      notice("");
      setState("listening"); // a new session listens; the server reports changes from here on
      applyMode();
      break;
    case "session.state":
      setState(ev.state);
      break;
    case "input_audio_buffer.speech_started":
      if (current) ignored.add(current.id);
      stopPlayback(); // barge-in: silence now; the server keeps only what was heard
      break;
    case "input_audio_buffer.speech_stopped":
      addEntry("user", `(you spoke ${(ev.audio_ms / 1000).toFixed(1)} s)`);
      break;
    case "response.created":
      kiosk.responses++;
      current = { id: ev.response_id, ...addEntry("assistant", "") };
      break;
    case "response.text.delta":
      if (current && ev.response_id === current.id) {
        current.item.text += ev.delta;
        current.body.textContent = current.item.text;
      }
      break;
    case "response.audio.delta":
      if (ignored.has(ev.response_id) || !current || ev.response_id !== current.id) break;
      kiosk.audioDeltas++;
      play(b64ToInt16(ev.delta));
      break;
    case "response.done":
      if (current && ev.response_id === current.id) {
        if (ev.status !== "completed") {
          current.item.text = ev.text;
          current.body.textContent = ev.text;
          tag(current.entry, `(${ev.status}: kept what was heard)`);
        }
        current = null;
      }
      showLatency(ev.timings);
      break;
    case "conversation.reset.done":
      $("transcript").textContent = "";
      kiosk.transcript = [];
      break;
    case "error":
      kiosk.errors.push(ev.error);
      notice(`${ev.error.code}: ${ev.error.message}`);
      if (ev.error.code === "server_full") setState("refused");
      break;
  }
}

function connect() {
  const token = new URLSearchParams(location.search).get("token");
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const url = `${scheme}://${location.host}/v1/realtime${token ? `?token=${encodeURIComponent(token)}` : ""}`;
  ws = new WebSocket(url);
  ws.onmessage = (m) => onEvent(JSON.parse(m.data));
  ws.onclose = () => {
    stopPlayback();
    current = null;
    if (kiosk.state !== "refused") setState("disconnected");
    setTimeout(connect, retryMs);
    retryMs = Math.min(retryMs * 2, 15000);
  };
}

// ----- microphone -----

async function startAudio() {
  ctx = new AudioContext();
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
  });
  await ctx.audioWorklet.addModule("/static/capture-worklet.js");
  const mic = ctx.createMediaStreamSource(stream);
  const capture = new AudioWorkletNode(ctx, "capture-16k", { numberOfInputs: 1, numberOfOutputs: 0 });
  capture.port.onmessage = (m) => {
    if (kiosk.mode === "hands-free" || talking) {
      send({ type: "input_audio_buffer.append", audio: int16ToB64(new Int16Array(m.data)) });
    }
  };
  mic.connect(capture);
}

function applyMode() {
  const ptt = kiosk.mode === "push-to-talk";
  $("mode-hands-free").classList.toggle("active", !ptt);
  $("mode-ptt").classList.toggle("active", ptt);
  $("mode-hands-free").setAttribute("aria-checked", String(!ptt));
  $("mode-ptt").setAttribute("aria-checked", String(ptt));
  $("talk").hidden = !ptt;
  send({ type: "session.update", session: { turn_detection: ptt ? null : { type: "server_vad" } } });
}

function setMode(mode) {
  kiosk.mode = mode;
  applyMode();
}

function press(e) {
  e.preventDefault();
  if (talking) return;
  talking = true;
  $("talk").classList.add("pressed");
  if (current) ignored.add(current.id);
  stopPlayback();
}

function release(e) {
  e.preventDefault();
  if (!talking) return;
  talking = false;
  $("talk").classList.remove("pressed");
  send({ type: "input_audio_buffer.commit" });
}

$("start-button").addEventListener("click", async () => {
  try {
    await startAudio();
  } catch (err) {
    notice(`microphone unavailable: ${err.message} (the page needs https, or localhost)`);
    return;
  }
  $("start").hidden = true;
  connect();
});
$("mode-hands-free").addEventListener("click", () => setMode("hands-free"));
$("mode-ptt").addEventListener("click", () => setMode("push-to-talk"));
$("reset").addEventListener("click", () => {
  stopPlayback();
  send({ type: "conversation.reset" });
});
$("talk").addEventListener("pointerdown", press);
$("talk").addEventListener("pointerup", release);
$("talk").addEventListener("pointerleave", release);
document.addEventListener("keydown", (e) => { if (e.code === "Space" && kiosk.mode === "push-to-talk") press(e); });
document.addEventListener("keyup", (e) => { if (e.code === "Space" && kiosk.mode === "push-to-talk") release(e); });
