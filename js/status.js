// ADD Turbo editor extension: what the pack's nodes show about their runs. The sampling nodes' last
// run time (with the stream's frame rate), the sampler's note on queued prompts sampled together, the
// loader's warm-up; drawn above the node by the classic canvas renderer, a DOM element in the Vue one.
// A helper module (see shared.js): it only declares things; the entry installs them.
import { app } from "../../scripts/app.js";
import { LIVE_NODES, allNodes, graphNodes, isContinuous, nodeByExecutionId } from "./shared.js";
import { fpsText } from "./stream.js";

export const COLOR = "#4b2f73";
export const BGCOLOR = "#2f2340";
const LABEL_COLOR = "#c9b8ff";

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
  syncVueLabelsSoon();
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
// renders for the node. Its components may re-create that element at any time: see watchVueNodes.
function syncVueLabels() {
  if (!globalThis.LiteGraph?.vueNodesMode) return;
  for (const node of graphNodes(app.canvas?.graph)) {
    const element = node.addTurboLabelElement;
    if (!element) continue;
    element.hidden = !(node.addTurboLastRun || node.addTurboNote) || !!node.flags?.collapsed;
    const nodeElement = document.querySelector(`.lg-node[data-node-id="${CSS.escape(String(node.id))}"]`);
    if (nodeElement && element.parentElement !== nodeElement) nodeElement.append(element);
  }
}

let syncFrame = null;

// Once per frame at most, whatever number of changes asked for it.
export function syncVueLabelsSoon() {
  if (syncFrame !== null || !globalThis.LiteGraph?.vueNodesMode) return;
  syncFrame = requestAnimationFrame(() => {
    syncFrame = null;
    syncVueLabels();
  });
}

// The Vue renderer adds, re-creates and removes the nodes' elements (switching the renderer on, opening
// a subgraph, collapsing a node, a re-render): each time it adds or removes elements, put the labels
// back. The classic renderer draws them itself (drawLabels) and changes no elements.
export function watchVueNodes() {
  new MutationObserver(syncVueLabelsSoon).observe(document.body, { childList: true, subtree: true });
}

// The classic renderer's onDrawForeground: the run time above the title bar on the right, the note on the left.
export function drawLabels(node, ctx) {
  if (!(node.addTurboLastRun || node.addTurboNote) || node.flags?.collapsed) return;
  ctx.save();
  ctx.font = "11px sans-serif";
  ctx.fillStyle = LABEL_COLOR;
  ctx.textAlign = "right";
  if (node.addTurboLastRun) ctx.fillText(node.addTurboLastRun, node.size[0] - 8, -8);
  // The note above the title bar, on the left: the node's source badge sits on the right.
  ctx.textAlign = "left";
  if (node.addTurboNote) ctx.fillText(node.addTurboNote, 4, -(globalThis.LiteGraph?.NODE_TITLE_HEIGHT ?? 30) - 6);
  ctx.restore();
}

// --- what runs report ---------------------------------------------------------------------------

// A run started: a note belongs to the run that sent it.
export function clearNotes() {
  for (const { node } of allNodes()) setNote(node, null);
}

// A run ended after `seconds`: each sampling node shows it (per image too, for a batch), a streaming
// node with its frame rate.
export function showRunTime(seconds, stream) {
  for (const { node } of allNodes()) {
    if (!LIVE_NODES.has(node.comfyClass)) continue;
    const batch = node.addTurboBatch || 1;
    setLabel(node, (stream && isContinuous(node) ? fpsText() : "") + `last run ${seconds.toFixed(2)} s`
      + (batch > 1 ? ` (${(seconds / batch).toFixed(2)} s/image)` : ""));
  }
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

// The server's "executed" message: a node's output, with what the pack's nodes tell (output.add_turbo).
export function onExecuted({ detail }) {
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
