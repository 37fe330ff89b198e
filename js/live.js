// ADD Turbo editor extension: live (as-you-type) mode, per sampling node. While on, a change to any
// widget value upstream of the node (prompt text, seed, strength, steps, ...) queues the graph after a
// short debounce; a newer change interrupts the stale running prompt and deletes stale queued ones
// (queue.js), so the image converges to the latest state and the queue never grows. Continuous mode
// (stream.js) is live mode that waits for each run's end instead. Only the pack's nodes are modified;
// other nodes are read. A helper module (see shared.js): it only declares things; the entry installs them.
//
// What tells of a change (each one leads to checkForChanges, which compares the upstream values):
//   - the pack's own live/continuous toggles, however they are set (watchToggle);
//   - the editor's "graphChanged" event: its change tracker compares the workflow after each edit on
//     the canvas or by keyboard, a link, an added or removed node, undo and redo;
//   - "input" and "change" events in the page: typing into a text box (the change tracker looks at
//     a text box only when it loses focus), the Vue renderer's widgets;
//   - a graph loaded (the entry's afterConfigureGraph), a pack node removed;
//   - the end of each run (the server's execution_success/_error/_interrupted messages).
// And a poll, only while a node has live mode on: see watchValues.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { live, currentSignature, executionId, isContinuous, liveNodes } from "./shared.js";
import { requestQueue } from "./queue.js";
import { continueStream, recordFrame, resetStream, streaming } from "./stream.js";
import { clearNotes, showRunTime } from "./status.js";

export const DEBOUNCE_SETTING = "ADDTurbo.Live.DebounceMs";
const POLL_MS = 100;

function debounceMs() {
  const value = app.extensionManager?.setting?.get?.(DEBOUNCE_SETTING);
  return Number.isFinite(value) ? value : 300;
}

function scheduleQueue() {
  clearTimeout(live.timer);
  live.timer = setTimeout(() => {
    live.timer = null;
    requestQueue();
  }, debounceMs());
}

// The editor has no event for a widget value written by code (`widget.value = x`): the mask editor
// saving its image into a Load Image node, an upload, another extension, a script. Its change
// tracker compares the workflow only after the user's own input (a mouse button released, a key, a
// text box left), and no DOM event fires either. So while a node has live mode on, the upstream
// values are still read every POLL_MS, as before; with no live node there is nothing to poll.
function watchValues(on) {
  if (on && live.poll === null) live.poll = setInterval(checkForChanges, POLL_MS);
  if (!on && live.poll !== null) {
    clearInterval(live.poll);
    live.poll = null;
  }
}

// Compare what the live nodes' images depend on with the last look: queue (after the debounce) when it
// changed, start a new starting point when the live nodes changed.
export function checkForChanges() {
  const nodes = liveNodes();
  watchValues(nodes.length > 0);
  const liveKey = nodes.map(({ node, path }) => executionId(node, path)).join(",");
  const continuous = nodes.some(({ node }) => isContinuous(node));
  const signature = currentSignature(nodes);
  if (signature === null || liveKey !== live.liveKey || continuous !== live.continuous) {
    // Turning live mode on (or loading another graph) does not queue by itself; continuous mode
    // starts a stream from a webcam only.
    if (continuous !== live.continuous) resetStream();
    live.liveKey = liveKey;
    live.continuous = continuous;
    live.signature = live.queuedSignature = signature;
    if (continuous) continueStream(nodes);
    return;
  }
  if (signature !== live.signature) {
    live.signature = signature;
    live.stats.edits++;
    // A stream never interrupts: the change goes into the next run, queued when the current one ends.
    if (!continuous) scheduleQueue();
  }
  if (continuous) continueStream(nodes);
}

let checkPending = false;

// Check once the event that asked for it is done (a renderer sets the value after the DOM event),
// once for many events at a time.
export function checkSoon() {
  if (checkPending) return;
  checkPending = true;
  setTimeout(() => {
    checkPending = false;
    checkForChanges();
  }, 0);
}

// The pack's own toggles tell each time a value is set, however it is set: the canvas, the Vue
// renderer (it writes the value, then calls the callback) or a script. The value stays where the
// frontend keeps it (its own accessor, or a plain property on the older ones).
export function watchToggle(widget) {
  let owner = widget;
  let descriptor;
  while (owner && !(descriptor = Object.getOwnPropertyDescriptor(owner, "value"))) owner = Object.getPrototypeOf(owner);
  const accessor = descriptor?.get && descriptor?.set ? descriptor : null;
  let stored = widget.value;
  Object.defineProperty(widget, "value", {
    configurable: true,
    enumerable: true,
    get: () => (accessor ? accessor.get.call(widget) : stored),
    set: (value) => {
      if (accessor) accessor.set.call(widget, value);
      else stored = value;
      checkSoon();
    },
  });
}

// --- the runs: the server's execution messages ---------------------------------------------------

function onExecutionStart({ detail }) {
  live.running = detail?.prompt_id ?? null;
  if (live.running) live.started.set(live.running, performance.now());
  clearNotes(); // a note belongs to the run that sent it
}

async function onExecutionEnd({ detail }) {
  const id = detail?.prompt_id;
  if (!id) return;
  const now = performance.now();
  // A short run can end before the answer to its queue request arrives: let that request finish,
  // so the id is known as live mode's before it is taken off `pending`.
  await live.queueing;
  const start = live.started.get(id);
  const queuedAt = live.queuedAt.get(id);
  live.started.delete(id);
  live.queuedAt.delete(id);
  const ours = live.pending.delete(id);
  if (live.running === id) live.running = null;
  const stream = ours && streaming();
  if (ours && !detail?.interrupted) {
    live.stats.completed++;
    if (stream) recordFrame(queuedAt, now);
  }
  // A failed or stopped stream run waits for a change: a broken graph must not loop on a webcam.
  if (stream && detail?.interrupted) live.halted = true;
  if (start !== undefined && !detail?.interrupted) showRunTime((now - start) / 1000, stream);
  continueStream();
}

// Listen to the server's messages on each run, and to the editor's and the page's change events.
export function watchLive() {
  api.addEventListener("execution_start", onExecutionStart);
  for (const type of ["execution_success", "execution_error", "execution_interrupted"]) {
    api.addEventListener(type, (event) => onExecutionEnd({ detail: { ...event.detail, interrupted: type !== "execution_success" } }));
  }
  api.addEventListener("graphChanged", checkSoon);
  for (const type of ["input", "change"]) document.addEventListener(type, checkSoon, true);
  checkForChanges();
}
