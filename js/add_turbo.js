// ADD Turbo editor extension: node colours, last-run time per image, and live (as-you-type) mode.
//
// Live mode, per sampling node: while on, a change to any widget value upstream of the node (prompt
// text, seed, strength, steps, ...) queues the graph after a short debounce; a newer change
// interrupts the stale running prompt and deletes stale queued ones, so the image converges to the
// latest state and the queue never grows. Only the pack's nodes are modified; other nodes are read.
//
// Works on the old frontends (numeric or string node ids, canvas renderer) and the newer ones
// (string ids, subgraphs, the Vue node renderer). Nodes are addressed by execution id: the ids of
// the subgraph nodes that contain a node, then its own id, joined by ":" (e.g. "7:4").
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const PACK_NODES = new Set(["ADDTurboLoader", "ADDTurboScheduler", "ADDTurboSampler", "ADDTurboSample", "ADDTurboRefine"]);
const LIVE_NODES = new Set(["ADDTurboSample", "ADDTurboRefine"]);
const DEBOUNCE_SETTING = "ADDTurbo.Live.DebounceMs";
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
  stats: { edits: 0, queued: 0, interrupted: 0, dropped: 0, rejected: 0 },
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

function liveWidget(node) {
  return node.widgets?.find((w) => w.name === "live");
}

// Derived from the widget itself: the canvas and the Vue renderer both set its value.
function liveNodes() {
  return allNodes().filter(({ node }) => LIVE_NODES.has(node.comfyClass) && liveWidget(node)?.value === true);
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

// Values of every widget on the nodes that feed `node` (and on `node` itself), in a stable order.
function upstreamSignature(node, path, seen = new Set()) {
  const id = executionId(node, path);
  if (seen.has(id)) return [];
  seen.add(id);
  const values = [[id, (node.widgets ?? []).filter((w) => w.name !== "live").map((w) => w.value)]];
  for (let slot = 0; slot < (node.inputs?.length ?? 0); slot++) {
    for (const source of linkSources(node, path, slot)) values.push(...upstreamSignature(source.node, source.path, seen));
  }
  return values;
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

function setLabel(node, text) {
  node.addTurboLastRun = text;
  labelElement(node).textContent = text;
  node.setDirtyCanvas?.(true, false);
}

// The Vue renderer ("Nodes 2.0") never calls onDrawForeground: put each label into the element it
// renders for the node. Its components may re-create that element at any time, so check each poll.
function showLabelsInVueNodes() {
  if (!globalThis.LiteGraph?.vueNodesMode) return;
  for (const node of graphNodes(app.canvas?.graph)) {
    const element = node.addTurboLabelElement;
    if (!element) continue;
    element.hidden = !node.addTurboLastRun || !!node.flags?.collapsed;
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
  // A refused prompt is the user's to fix (a missing file, a bad value): warn, and keep watching edits.
  console.warn(`[ADD Turbo] live mode: the server did not queue the prompt: ${live.lastError}`);
  app.extensionManager?.toast?.add?.({ severity: "error", summary: "ADD Turbo live mode", detail: live.lastError, life: 6000 });
}

async function queueLatest() {
  const signature = currentSignature();
  if (signature === null) return;
  live.signature = signature;
  try {
    await dropStale();
    const prompt = await app.graphToPrompt();
    const result = await api.queuePrompt(0, prompt);
    live.lastError = null;
    if (result?.prompt_id) {
      live.pending.add(result.prompt_id);
      live.stats.queued++;
    }
  } catch (error) {
    reportRejected(error);
  }
}

function scheduleQueue() {
  clearTimeout(live.timer);
  live.timer = setTimeout(() => {
    live.timer = null;
    // One request at a time, or a prompt still being sent could escape the next one's dropStale.
    const request = (live.queueing ?? Promise.resolve()).then(queueLatest);
    live.queueing = request;
    request.then(() => {
      if (live.queueing === request) live.queueing = null;
    });
  }, debounceMs());
}

function poll() {
  showLabelsInVueNodes();
  const nodes = liveNodes();
  const liveKey = nodes.map(({ node, path }) => executionId(node, path)).join(",");
  const signature = currentSignature(nodes);
  if (signature === null || liveKey !== live.liveKey) {
    // Turning live mode on (or loading another graph) does not queue by itself.
    live.liveKey = liveKey;
    live.signature = signature;
    return;
  }
  if (signature !== live.signature) {
    live.signature = signature;
    live.stats.edits++;
    scheduleQueue();
  }
}

// --- execution events ----------------------------------------------------------------------------

function onExecutionStart({ detail }) {
  live.running = detail?.prompt_id ?? null;
  if (live.running) live.started.set(live.running, performance.now());
}

function onExecutionEnd({ detail }) {
  const id = detail?.prompt_id;
  if (!id) return;
  const start = live.started.get(id);
  live.started.delete(id);
  live.pending.delete(id);
  if (live.running === id) live.running = null;
  if (start === undefined || detail?.interrupted) return;
  const seconds = (performance.now() - start) / 1000;
  for (const { node } of allNodes()) {
    if (!LIVE_NODES.has(node.comfyClass)) continue;
    const batch = node.addTurboBatch || 1;
    setLabel(node, `last run ${seconds.toFixed(2)} s` + (batch > 1 ? ` (${(seconds / batch).toFixed(2)} s/image)` : ""));
  }
}

function onExecuted({ detail }) {
  const node = nodeByExecutionId(detail?.node);
  if (node && LIVE_NODES.has(node.comfyClass)) node.addTurboBatch = detail?.output?.images?.length || 1;
  // The loader reports its compile warm-up (compile option): show it above the node.
  const message = detail?.output?.text?.[0];
  if (node?.comfyClass === "ADDTurboLoader" && typeof message === "string") {
    const warmUp = message.match(/warm-up ([\d.]+ s)/);
    setLabel(node, warmUp ? `compiled, warm-up ${warmUp[1]}` : message);
  }
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
        // No callback needed: the poll reads the value, however a renderer sets it.
        const widget = this.addWidget("toggle", "live", false, () => {}, { on: "live: on", off: "live: off", serialize: false });
        widget.serialize = false; // not part of the saved widget values
      }
      return result;
    };
    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      const result = onDrawForeground?.apply(this, arguments);
      if (this.addTurboLastRun && !this.flags?.collapsed) {
        ctx.save();
        ctx.font = "11px sans-serif";
        ctx.fillStyle = LABEL_COLOR;
        ctx.textAlign = "right";
        ctx.fillText(this.addTurboLastRun, this.size[0] - 8, -8);
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
    // For tests and curious users: window.ADDTurboLive.stats
    window.ADDTurboLive = live;
  },
});
