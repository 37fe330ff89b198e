"""What the browser tests share: the live-mode workflow on the tiny model, the server's history and queue,
live mode's state in the page (window.ADDTurboLive), subgraphs, and what the editor shows (images, labels)."""

import json
import re
import time
from pathlib import Path

from playwright.sync_api import expect

from devkit.client import ComfyClient

REPO = Path(__file__).resolve().parents[2]
DEBOUNCE_SETTING = "ADDTurbo.Live.DebounceMs"
LAST_RUN = re.compile(r"^last run \d+\.\d\d s$")
WAIT_S = 30  # bound for anything the editor or one run should do


def use_tiny_checkpoint(loader: dict, tiny_models) -> None:
    """The loader node on the tiny model, without the real files' download links: the editor would
    otherwise offer their download in a dialog over the canvas (the workflows' checkpoint is not here)."""
    loader["widgets_values"][0] = tiny_models["sd_turbo"].single_file.name
    loader.get("properties", {}).pop("models", None)


def live_workflow(tiny_models):
    workflow = json.loads((REPO / "workflows" / "SD-Turbo - text to image.json").read_text())
    for node in workflow["nodes"]:
        if node["type"] == "ADDTurboLoader":
            use_tiny_checkpoint(node, tiny_models)
        if node["type"] == "ADDTurboSample":
            node["widgets_values"][2] = 6  # steps: a run lasts long enough for a newer edit to catch it running
        if node["type"] == "EmptyLatentImage":
            node["widgets_values"][:2] = [256, 256]  # but not so long that the test waits for long
    return workflow


def server_history(server):
    with ComfyClient(server.url, events=False) as client:
        return client.history()


def queue_empty(server):
    with ComfyClient(server.url, events=False) as client:
        queue = client.get_json("/queue")
    return not queue["queue_running"] and not queue["queue_pending"]


def live_stats(editor):
    return editor.js("() => ({...window.ADDTurboLive.stats})")


def wait_live_idle(editor, server, timeout=120):
    """Until live mode has nothing left to do (no debounce, no request in flight, its prompts finished)
    and the server has taken the last one off its queue (a moment after it reports the end)."""
    editor.wait("() => { const l = window.ADDTurboLive; return !l.timer && !l.queueing && l.pending.size === 0; }",
                timeout=timeout)
    deadline = time.monotonic() + WAIT_S
    while not queue_empty(server):
        assert time.monotonic() < deadline, "the server queue did not drain"
        time.sleep(0.1)


def set_live(editor, sample_id, on):
    editor.node_js(sample_id, "(n, on) => { n.widgets.find(w => w.name === 'live').value = on; }", on)
    # Live mode takes the change as its new starting point (turning it on queues nothing by itself).
    editor.wait("(id) => (window.ADDTurboLive.liveKey || '').split(',').includes(id) === %s"
                % ("true" if on else "false"), sample_id, timeout=5)


def wait_or_explain(editor, expression: str, arg, timeout: float = WAIT_S):
    """editor.wait, but a time-out names live mode's state (what it queued, what runs, what is pending)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        return editor.wait(expression, arg, timeout=timeout)
    except PlaywrightTimeout:
        state = editor.js("() => { const l = window.ADDTurboLive; return JSON.stringify({stats: l.stats, "
                          "running: l.running, pending: [...l.pending], lastError: String(l.lastError ?? ''),"
                          " continuous: l.continuous, halted: l.halted, fps: l.fps}); }")
        raise AssertionError(f"live mode did not get there in {timeout} s (waited for {arg}); its state: {state}")


def focus_prompt(editor, renderer, text_id):
    """Put the caret at the end of the prompt's text box, as a user clicking into it would."""
    if renderer == "vue":
        editor.page.locator(f'.lg-node[data-node-id="{text_id}"] textarea').click()
    else:
        # Focus until it holds: a single focus() was sometimes lost while the newest frontend was still
        # placing its DOM widgets (the typed text then went nowhere).
        editor.wait("(id) => { const el = window.addTurboTest.node(id).widgets[0].inputEl; el.focus();"
                    " return document.activeElement === el; }", text_id, timeout=WAIT_S)
    editor.page.keyboard.press("Control+End")


def convert_to_subgraph(editor, node_id):
    """Put the node into a new subgraph (as the editor's "Convert to Subgraph" does); its new execution id."""
    node_type = editor.node_js(node_id, "(n) => n.type")
    editor.node_js(node_id, "(n) => { n.graph.convertToSubgraph(new Set([n])); }")
    return editor.find_node(node_type)


def open_subgraph_of(editor, execution_id):
    subgraph_node = execution_id.split(":")[0]
    editor.node_js(subgraph_node, "(n) => window.app.canvas.openSubgraph(n.subgraph, n)")
    editor.fit_view()


def exit_subgraphs(editor):
    for _ in range(8):
        if editor.js("() => window.app.canvas.graph === window.app.graph"):
            return
        editor.js("() => window.app.extensionManager.command.execute('Comfy.Graph.ExitSubgraph')")
        editor.next_frames()
    raise AssertionError("the editor did not return to the root graph")


def expect_image_shown(editor, renderer, save_id, filename):
    if renderer == "vue":
        image = editor.page.locator(f'.lg-node[data-node-id="{save_id}"] img[src*="{filename}"]')
        expect(image).to_be_visible(timeout=WAIT_S * 1000)
    else:
        editor.wait("([id, name]) => window.addTurboTest.node(id)?.imgs?.some(i => i.src.includes(name))",
                    [save_id, filename], timeout=WAIT_S)


def expect_label_shown(editor, renderer, node_id, text):
    """The label is on screen: a visible element in the Vue renderer, text drawn on the canvas otherwise."""
    if renderer == "vue":
        label = editor.page.locator(f'.lg-node[data-node-id="{node_id.split(":")[-1]}"] .add-turbo-label')
        expect(label).to_have_text(text, timeout=WAIT_S * 1000)
        expect(label).to_be_visible()
    else:
        editor.js("() => { window.addTurboTest.drawnText.clear(); window.app.canvas.setDirty(true, true); }")
        editor.wait("(text) => window.addTurboTest.drawnText.has(text)", text, timeout=WAIT_S)


def set_widgets(editor, node_id, values: dict):
    editor.node_js(node_id, "(n, values) => { for (const [name, value] of Object.entries(values)) {"
                            " const w = n.widgets.find(w => w.name === name);"
                            " if (!w) throw new Error(`no widget ${name}`); w.value = value; } }", values)
