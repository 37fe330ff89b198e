// ADD Turbo editor extension: node colours, last-run time per image, and live (as-you-type) mode.
//
// Live mode, per sampling node: while on, a change to any widget value upstream of the node (prompt
// text, seed, strength, steps, ...) queues the graph after a short debounce; a newer change
// interrupts the stale running prompt and deletes stale queued ones, so the image converges to the
// latest state and the queue never grows. Only the pack's nodes are modified; other nodes are read.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const PACK_NODES = new Set(["ADDTurboLoader", "ADDTurboScheduler", "ADDTurboSampler", "ADDTurboSample", "ADDTurboRefine"]);
const LIVE_NODES = new Set(["ADDTurboSample", "ADDTurboRefine"]);
const DEBOUNCE_SETTING = "ADDTurbo.Live.DebounceMs";
const POLL_MS = 100;
const COLOR = "#4b2f73";
const BGCOLOR = "#2f2340";

const live = {
  timer: null,        // debounce timer
  signature: null,    // upstream widget values at the last queue
  pending: new Set(), // prompt ids queued by live mode, not finished yet
  running: null,      // prompt id currently executing (any source)
  started: new Map(), // prompt id -> performance.now() at execution_start
  stats: { edits: 0, queued: 0, interrupted: 0, dropped: 0 },
};

function liveNodes() {
  return (app.graph?._nodes ?? []).filter((n) => LIVE_NODES.has(n.comfyClass) && n.addTurboLive);
}

// Values of every widget on the nodes that feed `node` (and on `node` itself), in a stable order.
function upstreamSignature(node, seen = new Set()) {
  if (!node || seen.has(node.id)) return [];
  seen.add(node.id);
  const values = [[node.id, (node.widgets ?? []).filter((w) => w.name !== "live").map((w) => w.value)]];
  for (let slot = 0; slot < (node.inputs?.length ?? 0); slot++) {
    const source = node.getInputNode?.(slot);
    if (source) values.push(...upstreamSignature(source, seen));
  }
  return values;
}

function currentSignature() {
  const nodes = liveNodes();
  return nodes.length ? JSON.stringify(nodes.map((n) => upstreamSignature(n))) : null;
}

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

async function queueLatest() {
  live.timer = null;
  const signature = currentSignature();
  if (signature === null) return;
  live.signature = signature;
  await dropStale();
  const prompt = await app.graphToPrompt();
  const result = await api.queuePrompt(0, prompt);
  if (result?.prompt_id) {
    live.pending.add(result.prompt_id);
    live.stats.queued++;
  }
}

function poll() {
  const signature = currentSignature();
  if (signature === null) {
    live.signature = null;
    return;
  }
  if (live.signature === null) {
    live.signature = signature; // turning live mode on does not queue by itself
    return;
  }
  if (signature !== live.signature) {
    live.signature = signature;
    live.stats.edits++;
    clearTimeout(live.timer);
    live.timer = setTimeout(queueLatest, debounceMs());
  }
}

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
  for (const node of app.graph?._nodes ?? []) {
    if (!LIVE_NODES.has(node.comfyClass)) continue;
    const batch = node.addTurboBatch || 1;
    node.addTurboLastRun = `last run ${seconds.toFixed(2)} s` + (batch > 1 ? ` (${(seconds / batch).toFixed(2)} s/image)` : "");
    node.setDirtyCanvas?.(true, false);
  }
}

function onExecuted({ detail }) {
  const node = app.graph?.getNodeById?.(Number(detail?.node));
  if (node && LIVE_NODES.has(node.comfyClass)) node.addTurboBatch = detail?.output?.images?.length || 1;
  // The loader reports its compile warm-up (compile option): show it above the node.
  const message = detail?.output?.text?.[0];
  if (node?.comfyClass === "ADDTurboLoader" && typeof message === "string") {
    const warmUp = message.match(/warm-up ([\d.]+ s)/);
    node.addTurboLastRun = warmUp ? `compiled, warm-up ${warmUp[1]}` : message;
    node.setDirtyCanvas?.(true, false);
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
        this.addTurboLive = false;
        const widget = this.addWidget("toggle", "live", false, (value) => {
          this.addTurboLive = !!value;
          live.signature = null;
        }, { on: "live: on", off: "live: off", serialize: false });
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
        ctx.fillStyle = "#c9b8ff";
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
