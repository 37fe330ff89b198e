// ADD Turbo editor extension: node colours, last-run time per image, and live (as-you-type) mode.
//
// Live mode, per sampling node: while on, a change to any widget value upstream of the node (prompt
// text, seed, strength, steps, ...) queues the graph after a short debounce; a newer change
// interrupts the stale running prompt and deletes stale queued ones, so the image converges to the
// latest state and the queue never grows. Only the pack's nodes are modified; other nodes are read.
//
// Continuous mode (a stream, for a live canvas or a camera) is live mode that never interrupts: the
// next run is queued as soon as the last one ends, when something upstream changed meanwhile (an image
// edited in the mask editor, a prompt) or a webcam upstream captures a new frame with each run. One
// run at a time; the node shows the frames per second reached.
//
// Works on the old frontends (numeric or string node ids, canvas renderer) and the newer ones
// (string ids, subgraphs, the Vue node renderer). Nodes are addressed by execution id: the ids of
// the subgraph nodes that contain a node, then its own id, joined by ":" (e.g. "7:4").
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const PACK_NODES = new Set(["ADDTurboLoader", "ADDTurboScheduler", "ADDTurboSampler", "ADDTurboSample", "ADDTurboRefine"]);
const LIVE_NODES = new Set(["ADDTurboSample", "ADDTurboRefine"]);
const DEBOUNCE_SETTING = "ADDTurbo.Live.DebounceMs";
// The node's own mode toggles, not part of what the image depends on.
const MODE_WIDGETS = new Set(["live", "continuous"]);
const FPS_WINDOW = 5; // runs the frame rate is averaged over
const POLL_MS = 100;
const COLOR = "#4b2f73";
const BGCOLOR = "#2f2340";
const LABEL_COLOR = "#c9b8ff";
// Link origins inside a subgraph that stand for the subgraph's own input slots.
const SUBGRAPH_INPUT_ID = "-10";
const MAX_SUBGRAPH_DEPTH = 32;

const live = {
  timer: null,        // debounce timer
  queueing: null,     // the last queue request, while in flight: requests run one after another
  liveKey: null,      // execution ids of the nodes with live on, at the last poll
  signature: null,    // upstream widget values at the last queue
  pending: new Set(), // prompt ids queued by live mode, not finished yet
  running: null,      // prompt id currently executing (any source)
  started: new Map(), // prompt id -> performance.now() at execution_start
  lastError: null,    // why the server refused the last prompt live mode sent, until one is accepted
  continuous: false,  // whether a live node is in continuous mode, at the last poll
  queuedSignature: null, // upstream widget values when the last prompt was queued
  halted: false,      // continuous mode's last run failed or was refused: wait for a change, even from a webcam
  queuedAt: new Map(), // prompt id -> performance.now() when live mode began to queue it
  lastFrameAt: null,  // performance.now() when the stream's last run completed
  frameTimes: [],     // wall time of the stream's last runs, ms
  fps: null,          // runs per second the stream reached, over the last FPS_WINDOW
  stats: { edits: 0, queued: 0, interrupted: 0, dropped: 0, rejected: 0, completed: 0, streamed: 0 },
};

// --- graph access: root graph, subgraphs, execution ids ---------------------------------------

function rootGraph() {
  return app.rootGraphOrUndefined ?? app.graph;
}

function graphNodes(graph) {
  return graph?.nodes ?? graph?._nodes ?? [];
}

function innerGraph(node) {
  return node?.isSubgraphNode?.() ? node.subgraph : null;
}

// Every node of the workflow, subgraph contents included, with the subgraph nodes that contain it.
function allNodes(graph = rootGraph(), path = [], found = []) {
  for (const node of graphNodes(graph)) {
    found.push({ node, path });
    const inner = innerGraph(node);
    if (inner && path.length < MAX_SUBGRAPH_DEPTH) allNodes(inner, [...path, node], found);
  }
  return found;
}

function executionId(node, path) {
  return [...path, node].map((n) => String(n.id)).join(":");
}

// The node an execution id (as in the server's messages) names, inside subgraphs too.
function nodeByExecutionId(id) {
  let graph = rootGraph();
  let node = null;
  for (const part of String(id ?? "").split(":")) {
    node = graph?.getNodeById?.(part) ?? null;
    if (!node) return null;
    graph = innerGraph(node);
  }
  return node;
}

// A subgraph node's own getInputLink means something else (the link inside that feeds an output
// slot): read every node's input links the way a plain node does.
function inputLink(node, slot) {
  const getInputLink = globalThis.LiteGraph?.LGraphNode?.prototype.getInputLink ?? node.getInputLink;
  return getInputLink?.call(node, slot) ?? null;
}

function widgetValue(node, name) {
  return node.widgets?.find((w) => w.name === name)?.value;
}

function isContinuous(node) {
  return LIVE_NODES.has(node.comfyClass) && widgetValue(node, "continuous") === true;
}

// Derived from the widgets themselves: the canvas and the Vue renderer both set their values.
// Continuous mode is live mode too.
function liveNodes() {
  return allNodes().filter(({ node }) => LIVE_NODES.has(node.comfyClass)
    && (widgetValue(node, "live") === true || widgetValue(node, "continuous") === true));
}

// --- what the image depends on ----------------------------------------------------------------

// The nodes that feed an input slot, followed across subgraph borders: a link from a subgraph's
// input slot leads to the subgraph node outside (its promoted widgets hold values too, so take the
// whole node); a link from a subgraph node's output also leads to the node inside that feeds it.
function linkSources(node, path, slot) {
  if (!node.graph) return []; // being removed
  const link = inputLink(node, slot);
  if (!link) return [];
  if (String(link.origin_id) === SUBGRAPH_INPUT_ID) {
    return path.length ? [{ node: path.at(-1), path: path.slice(0, -1) }] : [];
  }
  const origin = node.graph.getNodeById(link.origin_id);
  if (!origin) return [];
  const sources = [{ node: origin, path }];
  const inner = innerGraph(origin);
  if (inner && path.length < MAX_SUBGRAPH_DEPTH) {
    for (const linkId of inner.outputs?.[link.origin_slot]?.linkIds ?? []) {
      const innerLink = inner.getLink?.(linkId);
      const innerOrigin = innerLink && inner.getNodeById(innerLink.origin_id);
      if (innerOrigin) sources.push({ node: innerOrigin, path: [...path, origin] });
    }
  }
  return sources;
}

// `node` and every node that feeds it, each once, in a stable order.
function upstreamNodes(node, path, seen = new Set(), found = []) {
  const id = executionId(node, path);
  if (seen.has(id)) return found;
  seen.add(id);
  found.push({ node, id });
  for (let slot = 0; slot < (node.inputs?.length ?? 0); slot++) {
    for (const source of linkSources(node, path, slot)) upstreamNodes(source.node, source.path, seen, found);
  }
  return found;
}

// Values of every widget on the nodes that feed `node` (and on `node` itself).
function upstreamSignature(node, path) {
  return upstreamNodes(node, path).map(({ node: n, id }) =>
    [id, (n.widgets ?? []).filter((w) => !MODE_WIDGETS.has(w.name)).map((w) => w.value)]);
}

// The built-in Webcam Capture takes a new frame each time the graph is queued (unless its
// capture_on_queue is off), with no widget change to see: every run of a stream from it is new.
function capturesOnQueue(node, path) {
  return upstreamNodes(node, path).some(({ node: n }) => (n.comfyClass ?? n.constructor?.comfyClass) === "WebcamCapture"
    && (n.mode ?? 0) === 0 && widgetValue(n, "capture_on_queue") !== false);
}

function currentSignature(nodes = liveNodes()) {
  return nodes.length ? JSON.stringify(nodes.map(({ node, path }) => upstreamSignature(node, path))) : null;
}

// --- labels: drawn on the canvas by the classic renderer, a DOM element in the Vue renderer -------

function labelElement(node) {
  if (!node.addTurboLabelElement) {
    const element = document.createElement("div");
    element.className = "add-turbo-label";
    // Above the node's top right corner, where the classic renderer draws it; never takes clicks.
    element.style.cssText = "position:absolute;right:8px;bottom:calc(100% + 4px);font:11px sans-serif;"
      + `color:${LABEL_COLOR};white-space:nowrap;pointer-events:none;`;
    node.addTurboLabelElement = element;
  }
  return node.addTurboLabelElement;
}

function showLabel(node) {
  labelElement(node).textContent = [node.addTurboLastRun, node.addTurboNote].filter(Boolean).join(" · ");
  node.setDirtyCanvas?.(true, false);
}

function setLabel(node, text) {
  node.addTurboLastRun = text;
  showLabel(node);
}

// A note on the last run (the sampler's queue batching), shown next to its time; null clears it.
function setNote(node, text) {
  if (!text && !node.addTurboNote) return;
  node.addTurboNote = text || null;
  showLabel(node);
}

// The Vue renderer ("Nodes 2.0") never calls onDrawForeground: put each label into the element it
// renders for the node. Its components may re-create that element at any time, so check each poll.
function showLabelsInVueNodes() {
  if (!globalThis.LiteGraph?.vueNodesMode) return;
  for (const node of graphNodes(app.canvas?.graph)) {
    const element = node.addTurboLabelElement;
    if (!element) continue;
    element.hidden = !(node.addTurboLastRun || node.addTurboNote) || !!node.flags?.collapsed;
    const nodeElement = document.querySelector(`.lg-node[data-node-id="${CSS.escape(String(node.id))}"]`);
    if (nodeElement && element.parentElement !== nodeElement) nodeElement.append(element);
  }
}

// --- live mode -----------------------------------------------------------------------------------

function debounceMs() {
  const value = app.extensionManager?.setting?.get?.(DEBOUNCE_SETTING);
  return Number.isFinite(value) ? value : 300;
}

async function dropStale() {
  for (const id of [...live.pending]) {
    if (id === live.running) {
      await api.interrupt(id);
      live.stats.interrupted++;
    } else {
      await api.deleteItem("queue", id);
      live.stats.dropped++;
    }
    live.pending.delete(id);
    live.queuedAt.delete(id);
  }
}

// The server's reason for refusing a prompt (newer frontends throw PromptExecutionError with the
// response; older ones an error with the same response or just a message).
function rejectionText(error) {
  const response = error?.response;
  const main = typeof response?.error === "string" ? response.error : response?.error?.message;
  const details = Object.values(response?.node_errors ?? {}).flatMap((nodeError) =>
    (nodeError.errors ?? []).map((e) => `${nodeError.class_type}: ${e.message}${e.details ? ` (${e.details})` : ""}`));
  return [main ?? error?.message ?? String(error), ...details].join("\n");
}

function reportRejected(error) {
  live.lastError = rejectionText(error);
  live.stats.rejected++;
  live.halted = true;
  // A refused prompt is the user's to fix (a missing file, a bad value): warn, and keep watching edits.
  console.warn(`[ADD Turbo] live mode: the server did not queue the prompt: ${live.lastError}`);
  app.extensionManager?.toast?.add?.({ severity: "error", summary: "ADD Turbo live mode", detail: live.lastError, life: 6000 });
}

async function queueLatest() {
  const signature = currentSignature();
  if (signature === null) return;
  live.signature = live.queuedSignature = signature;
  const requested = performance.now(); // a webcam's capture and upload are part of a frame's time
  try {
    await dropStale();
    const prompt = await app.graphToPrompt();
    const result = await api.queuePrompt(0, prompt);
    live.lastError = null;
    if (result?.prompt_id) {
      live.pending.add(result.prompt_id);
      live.queuedAt.set(result.prompt_id, requested);
      live.stats.queued++;
    }
  } catch (error) {
    reportRejected(error);
  }
}

function requestQueue() {
  // One request at a time, or a prompt still being sent could escape the next one's dropStale.
  const request = (live.queueing ?? Promise.resolve()).then(queueLatest);
  live.queueing = request;
  request.then(() => {
    if (live.queueing === request) live.queueing = null;
  });
}

function scheduleQueue() {
  clearTimeout(live.timer);
  live.timer = setTimeout(() => {
    live.timer = null;
    requestQueue();
  }, debounceMs());
}

// Continuous mode: once nothing live mode queued is in flight, queue the next run if the upstream
// values changed since the last one was queued, or a webcam upstream takes a new frame. Read from the
// widgets each time, so a stream stops as soon as continuous mode is off or its node is gone.
function continueStream() {
  const nodes = liveNodes();
  const streams = nodes.filter(({ node }) => isContinuous(node));
  if (!streams.length || live.pending.size || live.queueing || live.timer) return;
  const changed = currentSignature(nodes) !== live.queuedSignature;
  if (!changed && (live.halted || !streams.some(({ node, path }) => capturesOnQueue(node, path)))) return;
  live.halted = false;
  live.stats.streamed++;
  requestQueue();
}

function resetStream() {
  live.halted = false;
  live.lastFrameAt = null;
  live.frameTimes = [];
  live.fps = null;
}

function poll() {
  showLabelsInVueNodes();
  const nodes = liveNodes();
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
    if (continuous) continueStream();
    return;
  }
  if (signature !== live.signature) {
    live.signature = signature;
    live.stats.edits++;
    // A stream never interrupts: the change goes into the next run, queued when the current one ends.
    if (!continuous) scheduleQueue();
  }
  if (continuous) continueStream();
}

// --- execution events ----------------------------------------------------------------------------

function onExecutionStart({ detail }) {
  live.running = detail?.prompt_id ?? null;
  if (live.running) live.started.set(live.running, performance.now());
  for (const { node } of allNodes()) setNote(node, null); // a note belongs to the run that sent it
}

// A stream run completed: its wall time runs from the previous completion, or from its queueing
// after a pause (so an idle stream does not lower the rate).
function recordFrame(queuedAt, now) {
  const since = Math.max(live.lastFrameAt ?? -Infinity, queuedAt ?? -Infinity);
  live.lastFrameAt = now;
  if (!Number.isFinite(since)) return;
  live.frameTimes = [...live.frameTimes, now - since].slice(-FPS_WINDOW);
  const total = live.frameTimes.reduce((sum, ms) => sum + ms, 0);
  if (total > 0) live.fps = (live.frameTimes.length * 1000) / total;
}

function fpsText() {
  return live.fps === null ? "" : `${live.fps.toFixed(live.fps < 1 ? 2 : 1)} fps, `;
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
  const stream = ours && liveNodes().some(({ node }) => isContinuous(node));
  if (ours && !detail?.interrupted) {
    live.stats.completed++;
    if (stream) recordFrame(queuedAt, now);
  }
  // A failed or stopped stream run waits for a change: a broken graph must not loop on a webcam.
  if (stream && detail?.interrupted) live.halted = true;
  if (start !== undefined && !detail?.interrupted) {
    const seconds = (now - start) / 1000;
    for (const { node } of allNodes()) {
      if (!LIVE_NODES.has(node.comfyClass)) continue;
      const batch = node.addTurboBatch || 1;
      setLabel(node, (stream && isContinuous(node) ? fpsText() : "") + `last run ${seconds.toFixed(2)} s`
        + (batch > 1 ? ` (${(seconds / batch).toFixed(2)} s/image)` : ""));
    }
  }
  continueStream();
}

// The sampler's note on queued prompts sampled together (queue_batch), short enough for a label. The node
// sends it as data ({prompts_together, seeds} or {sampled_ahead}), not as prose to parse.
function queueBatchNote(batching) {
  if (batching?.sampled_ahead) return "sampled ahead in a queued batch";
  return batching?.prompts_together > 1 ? `${batching.prompts_together} prompts in one UNet call` : null;
}

// The loader's label: its warm-up (compile or engine option) and how long it took, else its message.
function loaderLabel(shown) {
  if (typeof shown?.warm_up_s === "number") {
    const kind = shown.warm_up === "compile" ? "compiled, warm-up" : `${shown.warm_up} warm-up`;
    return `${kind} ${shown.warm_up_s.toFixed(1)} s`;
  }
  return shown?.message ?? "";
}

function onExecuted({ detail }) {
  const node = nodeByExecutionId(detail?.node);
  if (node && LIVE_NODES.has(node.comfyClass)) node.addTurboBatch = detail?.output?.images?.length || 1;
  const shown = detail?.output?.add_turbo?.[0];
  if (!shown) return;
  if (node?.comfyClass === "ADDTurboSample") {
    const note = queueBatchNote(shown);
    if (note) setNote(node, note);
  }
  if (node?.comfyClass === "ADDTurboLoader") setLabel(node, loaderLabel(shown));
}

app.registerExtension({
  name: "ADDTurbo.Live",
  settings: [
    {
      id: DEBOUNCE_SETTING,
      name: "ADD Turbo: live mode delay after an edit (ms)",
      type: "number",
      defaultValue: 300,
      attrs: { min: 0, max: 5000, step: 50 },
      tooltip: "How long live mode waits after the last edit before it queues the graph.",
    },
  ],

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!PACK_NODES.has(nodeData.name)) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      this.color = COLOR;
      this.bgcolor = BGCOLOR;
      if (LIVE_NODES.has(nodeData.name)) {
        // No callbacks needed: the poll reads the values, however a renderer sets them.
        const toggles = [
          ["live", "Queue the graph after each edit upstream of this node; a newer edit interrupts the stale run."],
          ["continuous", "Live mode as a stream: queue the next run as soon as the last one ends, while an image"
            + " upstream changes (Load Image edited in the mask editor) or a Webcam Capture takes a new frame each"
            + " run. One run at a time; shows the frames per second. Turns live mode on."],
        ];
        for (const [name, tooltip] of toggles) {
          const widget = this.addWidget("toggle", name, false, () => {}, { on: `${name}: on`, off: `${name}: off`, serialize: false });
          widget.serialize = false; // not part of the saved widget values
          widget.tooltip = tooltip;
        }
      }
      return result;
    };
    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      const result = onDrawForeground?.apply(this, arguments);
      if ((this.addTurboLastRun || this.addTurboNote) && !this.flags?.collapsed) {
        ctx.save();
        ctx.font = "11px sans-serif";
        ctx.fillStyle = LABEL_COLOR;
        ctx.textAlign = "right";
        if (this.addTurboLastRun) ctx.fillText(this.addTurboLastRun, this.size[0] - 8, -8);
        // The note above the title bar, on the left: the node's source badge sits on the right.
        ctx.textAlign = "left";
        if (this.addTurboNote) ctx.fillText(this.addTurboNote, 4, -(globalThis.LiteGraph?.NODE_TITLE_HEIGHT ?? 30) - 6);
        ctx.restore();
      }
      return result;
    };
  },

  setup() {
    api.addEventListener("execution_start", onExecutionStart);
    for (const type of ["execution_success", "execution_error", "execution_interrupted"]) {
      api.addEventListener(type, (event) => onExecutionEnd({ detail: { ...event.detail, interrupted: type !== "execution_success" } }));
    }
    api.addEventListener("executed", onExecuted);
    setInterval(poll, POLL_MS);
    // For tests and curious users: window.ADDTurboLive.stats, .continuous, .fps
    window.ADDTurboLive = live;
  },
});
