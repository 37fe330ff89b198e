// ADD Turbo editor extension, the entry: registers "ADDTurbo.Live" (node colours, the live and
// continuous toggles, run labels) and installs the parts, each a module of its own:
//   shared.js  constants, the shared state (window.ADDTurboLive), graph access, upstream values
//   live.js    live (as-you-type) mode: what tells of a change, the server's execution messages
//   queue.js   how live and continuous mode queue the graph (stale runs interrupted or dropped)
//   stream.js  continuous mode: the next run as the last one ends, frames per second
//   status.js  run times, notes and warm-up labels on the nodes, in both renderers
// ComfyUI imports every .js file under the pack's web directory as a module: the helpers declare
// things only, and the browser runs each module once however often it is imported (same URL), so
// only this file registers anything.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { live, LIVE_NODES, PACK_NODES } from "./shared.js";
import { DEBOUNCE_SETTING, checkSoon, watchLive, watchToggle } from "./live.js";
import { BGCOLOR, COLOR, drawLabels, onExecuted, syncVueLabelsSoon, watchVueNodes } from "./status.js";

const TOGGLES = [
  ["live", "Queue the graph after each edit upstream of this node; a newer edit interrupts the stale run."],
  ["continuous", "Live mode as a stream: queue the next run as soon as the last one ends, while an image"
    + " upstream changes (Load Image edited in the mask editor) or a Webcam Capture takes a new frame each"
    + " run. One run at a time; shows the frames per second. Turns live mode on."],
];

// Call `extra` after the node type's own method (if any), returning what that returned.
function extend(nodeType, method, extra) {
  const original = nodeType.prototype[method];
  nodeType.prototype[method] = function () {
    const result = original?.apply(this, arguments);
    extra.apply(this, arguments);
    return result;
  };
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
    extend(nodeType, "onNodeCreated", function () {
      this.color = COLOR;
      this.bgcolor = BGCOLOR;
      if (!LIVE_NODES.has(nodeData.name)) return;
      for (const [name, tooltip] of TOGGLES) {
        const widget = this.addWidget("toggle", name, false, checkSoon, { on: `${name}: on`, off: `${name}: off`, serialize: false });
        widget.serialize = false; // not part of the saved widget values
        widget.tooltip = tooltip;
        watchToggle(widget);
      }
    });
    extend(nodeType, "onDrawForeground", function (ctx) {
      drawLabels(this, ctx);
    });
    if (LIVE_NODES.has(nodeData.name)) extend(nodeType, "onRemoved", checkSoon); // a live node deleted
    extend(nodeType, "collapse", syncVueLabelsSoon); // a label hides with its node
  },

  // Another workflow opened (a tab, a file, undo): live mode starts from its values.
  afterConfigureGraph() {
    checkSoon();
  },

  setup() {
    api.addEventListener("executed", onExecuted);
    watchLive();
    watchVueNodes();
    // For tests and curious users: window.ADDTurboLive.stats, .continuous, .fps
    window.ADDTurboLive = live;
  },
});
