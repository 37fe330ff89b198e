// ADD Turbo editor extension: continuous mode (a stream, for a live canvas or a camera). Live mode that
// never interrupts: the next run is queued as soon as the last one ends, when something upstream
// changed meanwhile (an image edited in the mask editor, a prompt) or a webcam upstream captures a new
// frame with each run. One run at a time; the node shows the frames per second reached. A helper
// module (see shared.js): it only declares things.
import { live, currentSignature, isContinuous, liveNodes, upstreamNodes, widgetValue } from "./shared.js";
import { requestQueue } from "./queue.js";

const FPS_WINDOW = 5; // runs the frame rate is averaged over

// The built-in Webcam Capture takes a new frame each time the graph is queued (unless its
// capture_on_queue is off), with no widget change to see: every run of a stream from it is new.
function capturesOnQueue(node, path) {
  return upstreamNodes(node, path).some(({ node: n }) => (n.comfyClass ?? n.constructor?.comfyClass) === "WebcamCapture"
    && (n.mode ?? 0) === 0 && widgetValue(n, "capture_on_queue") !== false);
}

// Once nothing live mode queued is in flight, queue the next run if the upstream values changed since
// the last one was queued, or a webcam upstream takes a new frame. Read from the widgets each time, so
// a stream stops as soon as continuous mode is off or its node is gone. Called after each change seen
// and after each run's end.
export function continueStream(nodes = liveNodes()) {
  const streams = nodes.filter(({ node }) => isContinuous(node));
  if (!streams.length || live.pending.size || live.queueing || live.timer) return;
  const changed = currentSignature(nodes) !== live.queuedSignature;
  if (!changed && (live.halted || !streams.some(({ node, path }) => capturesOnQueue(node, path)))) return;
  live.halted = false;
  live.stats.streamed++;
  requestQueue();
}

// Continuous mode turned on or off: a new stream, with no frame rate yet.
export function resetStream() {
  live.halted = false;
  live.lastFrameAt = null;
  live.frameTimes = [];
  live.fps = null;
}

// Whether a node is streaming now (continuous mode on a live node).
export function streaming() {
  return liveNodes().some(({ node }) => isContinuous(node));
}

// A stream run completed: its wall time runs from the previous completion, or from its queueing
// after a pause (so an idle stream does not lower the rate).
export function recordFrame(queuedAt, now) {
  const since = Math.max(live.lastFrameAt ?? -Infinity, queuedAt ?? -Infinity);
  live.lastFrameAt = now;
  if (!Number.isFinite(since)) return;
  live.frameTimes = [...live.frameTimes, now - since].slice(-FPS_WINDOW);
  const total = live.frameTimes.reduce((sum, ms) => sum + ms, 0);
  if (total > 0) live.fps = (live.frameTimes.length * 1000) / total;
}

// The label's frame rate, "" before the stream has one.
export function fpsText() {
  return live.fps === null ? "" : `${live.fps.toFixed(live.fps < 1 ? 2 : 1)} fps, `;
}
