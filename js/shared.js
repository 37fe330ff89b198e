// ADD Turbo editor extension, shared part: constants, the state live mode and continuous mode share
// (window.ADDTurboLive), and read-only access to the graph: nodes by execution id, inside subgraphs,
// and the widget values a node's image depends on.
//
// Works on the old frontends (numeric or string node ids, canvas renderer) and the newer ones
// (string ids, subgraphs, the Vue node renderer). Nodes are addressed by execution id: the ids of
// the subgraph nodes that contain a node, then its own id, joined by ":" (e.g. "7:4").
//
// A helper module: the editor imports every .js file of the pack as a module of its own, and this one
// only declares things (the entry, add_turbo.js, registers the extension).
import { app } from "../../scripts/app.js";

export const PACK_NODES = new Set(["ADDTurboLoader", "ADDTurboScheduler", "ADDTurboSampler", "ADDTurboSample", "ADDTurboRefine"]);
export const LIVE_NODES = new Set(["ADDTurboSample", "ADDTurboRefine"]);
// The node's own mode toggles, not part of what the image depends on.
export const MODE_WIDGETS = new Set(["live", "continuous"]);
// Link origins inside a subgraph that stand for the subgraph's own input slots.
const SUBGRAPH_INPUT_ID = "-10";
const MAX_SUBGRAPH_DEPTH = 32;

export const live = {
  timer: null,        // debounce timer
  queueing: null,     // the last queue request, while in flight: requests run one after another
  liveKey: null,      // execution ids of the nodes with live on, at the last check
  signature: null,    // upstream widget values at the last queue
  pending: new Set(), // prompt ids queued by live mode, not finished yet
  running: null,      // prompt id currently executing (any source)
  started: new Map(), // prompt id -> performance.now() at execution_start
  lastError: null,    // why the server refused the last prompt live mode sent, until one is accepted
  continuous: false,  // whether a live node is in continuous mode, at the last check
  queuedSignature: null, // upstream widget values when the last prompt was queued
  halted: false,      // continuous mode's last run failed or was refused: wait for a change, even from a webcam
  queuedAt: new Map(), // prompt id -> performance.now() when live mode began to queue it
  lastFrameAt: null,  // performance.now() when the stream's last run completed
  frameTimes: [],     // wall time of the stream's last runs, ms
  fps: null,          // runs per second the stream reached, over the last FPS_WINDOW
  poll: null,         // the value poll, while a node has live mode on (see live.js)
  stats: { edits: 0, queued: 0, interrupted: 0, dropped: 0, rejected: 0, completed: 0, streamed: 0 },
};

// --- graph access: root graph, subgraphs, execution ids ---------------------------------------

function rootGraph() {
  return app.rootGraphOrUndefined ?? app.graph;
}

export function graphNodes(graph) {
  return graph?.nodes ?? graph?._nodes ?? [];
}

function innerGraph(node) {
  return node?.isSubgraphNode?.() ? node.subgraph : null;
}

// Every node of the workflow, subgraph contents included, with the subgraph nodes that contain it.
export function allNodes(graph = rootGraph(), path = [], found = []) {
  for (const node of graphNodes(graph)) {
    found.push({ node, path });
    const inner = innerGraph(node);
    if (inner && path.length < MAX_SUBGRAPH_DEPTH) allNodes(inner, [...path, node], found);
  }
  return found;
}

export function executionId(node, path) {
  return [...path, node].map((n) => String(n.id)).join(":");
}

// The node an execution id (as in the server's messages) names, inside subgraphs too.
export function nodeByExecutionId(id) {
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

export function widgetValue(node, name) {
  return node.widgets?.find((w) => w.name === name)?.value;
}

export function isContinuous(node) {
  return LIVE_NODES.has(node.comfyClass) && widgetValue(node, "continuous") === true;
}

// Derived from the widgets themselves: the canvas and the Vue renderer both set their values.
// Continuous mode is live mode too.
export function liveNodes() {
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
export function upstreamNodes(node, path, seen = new Set(), found = []) {
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

export function currentSignature(nodes = liveNodes()) {
  return nodes.length ? JSON.stringify(nodes.map(({ node, path }) => upstreamSignature(node, path))) : null;
}
