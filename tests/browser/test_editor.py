"""The editor in a real headless Chromium (Debian's package, driven by Playwright) against a real server."""

import json
import time
from pathlib import Path

import pytest
import requests

from tests.support.browser import Editor

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))


@pytest.fixture(scope="module")
def editor(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        ed = Editor(playwright, server.url)
        yield ed
        ed.close()


def test_editor_opens_with_the_extension_and_no_pack_errors(editor):
    assert editor.js("() => window.app.extensions.some(e => e.name === 'ADDTurbo.Live')")
    assert editor.js("() => ['ADDTurboLoader','ADDTurboScheduler','ADDTurboSampler','ADDTurboSample','ADDTurboRefine']"
                     ".every(t => !!window.LiteGraph.registered_node_types[t])")
    assert editor.pack_errors() == []


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_every_workflow_loads_with_no_missing_nodes_and_its_values(editor, path):
    workflow = json.loads(path.read_text())
    editor.load_workflow(workflow)
    nodes = editor.js("""() => window.app.graph._nodes.map(n => ({id: n.id, type: n.type,
        registered: !!window.LiteGraph.registered_node_types[n.type], color: n.color,
        values: (n.widgets || []).filter(w => w.name !== 'live').map(w => w.value)}))""")
    assert len(nodes) == len(workflow["nodes"])
    assert all(n["registered"] for n in nodes), [n for n in nodes if not n["registered"]]
    by_id = {n["id"]: n for n in nodes}
    for node in workflow["nodes"]:
        if node["type"].startswith("ADDTurbo"):
            shown = by_id[node["id"]]
            assert shown["values"][: len(node["widgets_values"])] == node["widgets_values"], node["type"]
            assert shown["color"] == "#4b2f73"
    editor.fit_view()
    editor.screenshot(f"editor_{path.stem}.png")
    assert editor.pack_errors() == []


def _live_workflow(tiny_models):
    workflow = json.loads((REPO / "workflows" / "add_turbo_sd_turbo_txt2img.json").read_text())
    for node in workflow["nodes"]:
        if node["type"] == "ADDTurboLoader":
            node["widgets_values"][0] = tiny_models["sd_turbo"].single_file.name
        if node["type"] == "ADDTurboSample":
            node["widgets_values"][2] = 4  # steps: slow enough that stale runs are caught running
    return workflow


def _history(server):
    return requests.get(server.url + "/history", timeout=30).json()


def _queue_empty(server):
    queue = requests.get(server.url + "/queue", timeout=30).json()
    return not queue["queue_running"] and not queue["queue_pending"]


def _type_edits(editor, edits, pause_ms):
    editor.js("() => { const n = window.app.graph._nodes.find(n => n.type === 'CLIPTextEncode');"
              " n.widgets[0].inputEl.focus(); }")
    for text in edits:
        editor.page.keyboard.type(text, delay=15)
        editor.page.wait_for_timeout(pause_ms)


def _wait_idle(server, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if _queue_empty(server):
            time.sleep(0.5)
            if _queue_empty(server):
                return
        time.sleep(0.2)
    raise TimeoutError("queue did not drain")


def test_live_mode_converges_to_the_last_edit_and_never_grows_the_queue(editor, server, tiny_models):
    editor.load_workflow(_live_workflow(tiny_models))
    editor.js("() => window.app.extensionManager.setting.set('ADDTurbo.Live.DebounceMs', 200)")
    before = set(_history(server))
    editor.js("""() => { const n = window.app.graph._nodes.find(n => n.type === 'ADDTurboSample');
        const w = n.widgets.find(w => w.name === 'live'); w.value = true; w.callback(true); }""")
    editor.page.wait_for_timeout(300)
    edits = [", red boats", ", blue sky", ", seagulls", ", storm clouds", ", lighthouse"]
    _type_edits(editor, edits, pause_ms=450)
    _wait_idle(server)
    stats = editor.js("() => window.ADDTurboLive.stats")
    final_text = editor.js("() => window.app.graph._nodes.find(n => n.type === 'CLIPTextEncode').widgets[0].value")
    new = {k: v for k, v in _history(server).items() if k not in before}
    completed = [v for v in new.values() if v["status"].get("status_str") == "success"]
    interrupted = [v for v in new.values() if v["status"].get("status_str") != "success"]
    last = max(completed, key=lambda v: v["prompt"][0])
    last_text = next(n["inputs"]["text"] for n in last["prompt"][2].values() if n["class_type"] == "CLIPTextEncode")
    shot = editor.screenshot("live_mode.png")
    print(f"\nLIVE edits typed: {len(edits)} (changes seen: {stats['edits']}), runs queued: {stats['queued']}, "
          f"completed: {len(completed)}, interrupted: {stats['interrupted']} (history: {len(interrupted)}), "
          f"dropped from queue: {stats['dropped']}; final image from the last text: {last_text == final_text}; "
          f"screenshot {shot}")
    assert last_text == final_text and final_text.endswith("lighthouse")
    assert stats["queued"] >= 2
    assert stats["interrupted"] + stats["dropped"] >= 1
    assert len(completed) < stats["queued"]  # stale runs did not all run to the end
    assert _queue_empty(server)
    assert editor.pack_errors() == []

    # Live mode off: edits queue nothing.
    editor.js("""() => { const n = window.app.graph._nodes.find(n => n.type === 'ADDTurboSample');
        const w = n.widgets.find(w => w.name === 'live'); w.value = false; w.callback(false); }""")
    count = len(_history(server))
    _type_edits(editor, [", night", ", fog"], pause_ms=400)
    editor.page.wait_for_timeout(800)
    assert len(_history(server)) == count and _queue_empty(server)
    assert editor.js("() => window.ADDTurboLive.stats.queued") == stats["queued"]
