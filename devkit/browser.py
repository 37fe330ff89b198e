"""Headless Chromium (Debian's package) driven by Playwright, pointed at a running ComfyUI."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .host import HOME

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("ADD_TURBO_ARTIFACTS", HOME / "artifacts"))
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
VUE_NODES_SETTING = "Comfy.VueNodes.Enabled"

# Page-side helpers for the tests and scripts (node look-up by execution id across subgraphs, a record of the
# text the canvas draws). Installed before the editor's own scripts run.
PAGE_HELPERS = """
window.addTurboTest = {
  // A node by execution id: the ids of the subgraph nodes that contain it, then its own, joined by ':'.
  node(executionId) {
    let graph = window.app.graph, node = null;
    for (const part of String(executionId).split(':')) {
      node = graph?.getNodeById(part) ?? null;
      graph = node?.isSubgraphNode?.() ? node.subgraph : null;
    }
    return node;
  },
  // Execution id of the first node of a type, searching subgraphs too.
  find(type, graph = window.app.graph, path = []) {
    for (const node of graph._nodes) {
      if (node.type === type) return [...path, node.id].join(':');
      if (node.isSubgraphNode?.()) {
        const found = this.find(type, node.subgraph, [...path, node.id]);
        if (found) return found;
      }
    }
    return null;
  },
  drawnText: new Set(),
};
const fillText = CanvasRenderingContext2D.prototype.fillText;
CanvasRenderingContext2D.prototype.fillText = function (text) {
  window.addTurboTest.drawnText.add(String(text));
  return fillText.apply(this, arguments);
};
"""


class Editor:
    """The ComfyUI editor in a page; console messages are collected in `console`."""

    def __init__(self, playwright, url: str, width: int = 1600, height: int = 1000):
        self.browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        self.page = self.browser.new_page(viewport={"width": width, "height": height})
        self.console: list[tuple[str, str]] = []
        self.page.on("console", lambda msg: self.console.append((msg.type, msg.text)))
        self.page.on("pageerror", lambda error: self.console.append(("pageerror", str(error))))
        self.failed_urls: list[str] = []
        self.page.on("response", lambda r: r.status >= 400 and self.failed_urls.append(f"{r.status} {r.url}"))
        self.page.add_init_script(PAGE_HELPERS)
        self.page.goto(url)
        # Ready once the editor has opened its first workflow (a later one would replace a test's graph).
        self.page.wait_for_function("() => window.app?.graph && window.app.canvas && window.ADDTurboLive"
                                    " && window.app.extensionManager?.workflow?.activeWorkflow"
                                    " && !window.app.extensionManager.spinner", timeout=60_000)

    def js(self, expression: str, arg=None):
        return self.page.evaluate(expression, arg)

    def wait(self, expression: str, arg=None, timeout: float = 30) -> object:
        """Wait (at most `timeout` seconds) until the page function returns a truthy value; return it."""
        return self.page.wait_for_function(expression, arg=arg, timeout=timeout * 1000).json_value()

    def next_frames(self) -> None:
        """Let the editor render what changed (two animation frames)."""
        self.js("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")

    def load_workflow(self, workflow: dict) -> None:
        self.js("async (w) => { await window.app.loadGraphData(w); }", workflow)
        self.next_frames()

    def setting(self, setting_id: str, value) -> None:
        self.js("([id, value]) => window.app.extensionManager.setting.set(id, value)", [setting_id, value])

    def set_vue_nodes(self, enabled: bool) -> None:
        """Switch the Vue node renderer ("Nodes 2.0") on or off and wait until it took effect."""
        self.setting(VUE_NODES_SETTING, enabled)
        self.wait("(on) => !!window.LiteGraph.vueNodesMode === on"
                  " && (!on || document.querySelector('.lg-node[data-node-id]'))", enabled)
        self.next_frames()

    def node_js(self, execution_id: str, body: str, arg=None):
        """Evaluate `body` (a function of node and arg) on the node with that execution id."""
        return self.js(f"([id, arg]) => {{ const node = window.addTurboTest.node(id); return ({body})(node, arg); }}",
                       [execution_id, arg])

    def find_node(self, node_type: str) -> str | None:
        return self.js("(type) => window.addTurboTest.find(type)", node_type)

    def pack_errors(self) -> list:
        """Console errors and failed requests that come from this pack's extension or nodes."""
        ours = ("add-turbo", "add_turbo", "ADDTurbo", "ADD Turbo")
        errors = [text for kind, text in self.console if kind in ("error", "pageerror") and any(o in text for o in ours)
                  # the editor's own registry look-ups of node ids, blocked offline by its CSP: not the pack's
                  and "Content Security Policy" not in text]
        return errors + [url for url in self.failed_urls if any(o in url for o in ours)]

    def page_errors(self) -> list[str]:
        """Uncaught exceptions and unhandled promise rejections in the page, whatever their source."""
        return [text for kind, text in self.console if kind == "pageerror"]

    def fit_view(self) -> None:
        self.js("() => window.app.extensionManager.command.execute('Comfy.Canvas.FitView')")
        self.next_frames()

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / name
        self.page.screenshot(path=str(path))
        return path

    def close(self) -> None:
        self.browser.close()
