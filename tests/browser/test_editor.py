"""The editor in a real headless Chromium (Debian's package, driven by Playwright) against a real server,
once with the frontend the host ships ("bundled") and once with the newest frontend ("newest")."""

import json
import re
import time
from pathlib import Path

import pytest
import requests
from playwright.sync_api import expect

from tests.support import host
from tests.support.browser import Editor

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
DEBOUNCE_SETTING = "ADDTurbo.Live.DebounceMs"
LAST_RUN = re.compile(r"^last run \d+\.\d\d s$")
WAIT_S = 30  # bound for anything the editor or one run should do


@pytest.fixture(scope="module")
def editor(frontend_server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        ed = Editor(playwright, frontend_server.url)
        yield ed
        ed.close()


def test_editor_opens_with_the_extension_and_no_pack_errors(editor):
    assert editor.js("() => window.app.extensions.some(e => e.name === 'ADDTurbo.Live')")
    assert editor.js("() => ['ADDTurboLoader','ADDTurboScheduler','ADDTurboSampler','ADDTurboSample','ADDTurboRefine']"
                     ".every(t => !!window.LiteGraph.registered_node_types[t])")
    assert editor.pack_errors() == []


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_every_workflow_loads_with_no_missing_nodes_and_its_values(editor, frontend_server, path):
    workflow = json.loads(path.read_text())
    editor.load_workflow(workflow)
    nodes = editor.js("""() => window.app.graph._nodes.map(n => ({id: String(n.id), type: n.type,
        registered: !!window.LiteGraph.registered_node_types[n.type], color: n.color,
        values: (n.widgets || []).filter(w => w.name !== 'live').map(w => w.value)}))""")
    assert len(nodes) == len(workflow["nodes"])
    assert all(n["registered"] for n in nodes), [n for n in nodes if not n["registered"]]
    by_id = {n["id"]: n for n in nodes}  # newer frontends use string ids
    for node in workflow["nodes"]:
        if node["type"].startswith("ADDTurbo"):
            shown = by_id[str(node["id"])]
            assert shown["values"][: len(node["widgets_values"])] == node["widgets_values"], node["type"]
            assert shown["color"] == "#4b2f73"
    editor.fit_view()
    editor.screenshot(f"editor_{host.HOST}_{frontend_server.frontend}_{path.stem}.png")
    assert editor.pack_errors() == []


# --- live mode ---------------------------------------------------------------------------------------


def _live_workflow(tiny_models):
    workflow = json.loads((REPO / "workflows" / "add_turbo_sd_turbo_txt2img.json").read_text())
    for node in workflow["nodes"]:
        if node["type"] == "ADDTurboLoader":
            node["widgets_values"][0] = tiny_models["sd_turbo"].single_file.name
        if node["type"] == "ADDTurboSample":
            node["widgets_values"][2] = 6  # steps: a run lasts long enough for a newer edit to catch it running
        if node["type"] == "EmptyLatentImage":
            node["widgets_values"][:2] = [256, 256]  # but not so long that the test waits for long
    return workflow


def _history(server):
    return requests.get(server.url + "/history", timeout=30).json()


def _queue_empty(server):
    queue = requests.get(server.url + "/queue", timeout=30).json()
    return not queue["queue_running"] and not queue["queue_pending"]


def _stats(editor):
    return editor.js("() => ({...window.ADDTurboLive.stats})")


def _wait_live_idle(editor, server, timeout=120):
    """Until live mode has nothing left to do (no debounce, no request in flight, its prompts finished)
    and the server has taken the last one off its queue (a moment after it reports the end)."""
    editor.wait("() => { const l = window.ADDTurboLive; return !l.timer && !l.queueing && l.pending.size === 0; }",
                timeout=timeout)
    deadline = time.monotonic() + WAIT_S
    while not _queue_empty(server):
        assert time.monotonic() < deadline, "the server queue did not drain"
        time.sleep(0.1)


def _set_live(editor, sample_id, on):
    editor.node_js(sample_id, "(n, on) => { n.widgets.find(w => w.name === 'live').value = on; }", on)
    # Live mode takes the change as its new starting point (turning it on queues nothing by itself).
    editor.wait("(id) => (window.ADDTurboLive.liveKey || '').split(',').includes(id) === %s"
                % ("true" if on else "false"), sample_id, timeout=5)


def _wait_or_explain(editor, expression: str, arg):
    """editor.wait, but a time-out names live mode's state (what it queued, what runs, what is pending)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        return editor.wait(expression, arg, timeout=WAIT_S)
    except PlaywrightTimeout:
        state = editor.js("() => { const l = window.ADDTurboLive; return JSON.stringify({stats: l.stats, "
                          "running: l.running, pending: [...l.pending], lastError: String(l.lastError ?? '')}); }")
        raise AssertionError(f"live mode did not get there in {WAIT_S} s (waited for {arg}); its state: {state}")


def _focus_prompt(editor, renderer, text_id):
    """Put the caret at the end of the prompt's text box, as a user clicking into it would."""
    if renderer == "vue":
        editor.page.locator(f'.lg-node[data-node-id="{text_id}"] textarea').click()
    else:
        # Focus until it holds: a single focus() was sometimes lost while the newest frontend was still
        # placing its DOM widgets (the typed text then went nowhere).
        editor.wait("(id) => { const el = window.addTurboTest.node(id).widgets[0].inputEl; el.focus();"
                    " return document.activeElement === el; }", text_id, timeout=WAIT_S)
    editor.page.keyboard.press("Control+End")


def _convert_to_subgraph(editor, node_id):
    """Put the node into a new subgraph (as the editor's "Convert to Subgraph" does); its new execution id."""
    node_type = editor.node_js(node_id, "(n) => n.type")
    editor.node_js(node_id, "(n) => { n.graph.convertToSubgraph(new Set([n])); }")
    return editor.find_node(node_type)


def _open_subgraph_of(editor, execution_id):
    subgraph_node = execution_id.split(":")[0]
    editor.node_js(subgraph_node, "(n) => window.app.canvas.openSubgraph(n.subgraph, n)")
    editor.fit_view()


def _exit_subgraphs(editor):
    for _ in range(8):
        if editor.js("() => window.app.canvas.graph === window.app.graph"):
            return
        editor.js("() => window.app.extensionManager.command.execute('Comfy.Graph.ExitSubgraph')")
        editor.next_frames()
    raise AssertionError("the editor did not return to the root graph")


def _expect_image_shown(editor, renderer, save_id, filename):
    if renderer == "vue":
        image = editor.page.locator(f'.lg-node[data-node-id="{save_id}"] img[src*="{filename}"]')
        expect(image).to_be_visible(timeout=WAIT_S * 1000)
    else:
        editor.wait("([id, name]) => window.addTurboTest.node(id)?.imgs?.some(i => i.src.includes(name))",
                    [save_id, filename], timeout=WAIT_S)


def _expect_label_shown(editor, renderer, node_id, text):
    """The label is on screen: a visible element in the Vue renderer, text drawn on the canvas otherwise."""
    if renderer == "vue":
        label = editor.page.locator(f'.lg-node[data-node-id="{node_id.split(":")[-1]}"] .add-turbo-label')
        expect(label).to_have_text(text, timeout=WAIT_S * 1000)
        expect(label).to_be_visible()
    else:
        editor.js("() => { window.addTurboTest.drawnText.clear(); window.app.canvas.setDirty(true, true); }")
        editor.wait("(text) => window.addTurboTest.drawnText.has(text)", text, timeout=WAIT_S)


@pytest.fixture
def renderer_view(editor, request):
    """Switch the node renderer for one test; back to the classic canvas and the root graph afterwards."""
    renderer = request.param
    yield renderer
    _exit_subgraphs(editor)
    if renderer == "vue":
        editor.set_vue_nodes(False)


# The classic renderer with the subgraph is covered by the rejected-prompt test below.
@pytest.mark.parametrize("renderer_view,layout", [("classic", "root"), ("vue", "subgraph")], indirect=["renderer_view"])
def test_live_mode_converges_to_the_last_edit_and_shows_image_and_label(editor, frontend_server, tiny_models,
                                                                        renderer_view, layout):
    server, renderer = frontend_server, renderer_view
    editor.load_workflow(_live_workflow(tiny_models))
    if renderer == "vue":
        editor.set_vue_nodes(True)
    sample_id = editor.find_node("ADDTurboSample")
    text_id, save_id = editor.find_node("CLIPTextEncode"), editor.find_node("SaveImage")
    if layout == "subgraph":
        sample_id = _convert_to_subgraph(editor, sample_id)
        assert re.fullmatch(r"\d+:\d+", sample_id), sample_id
    editor.fit_view()
    editor.setting(DEBOUNCE_SETTING, 150)
    before = set(_history(server))
    _set_live(editor, sample_id, True)

    # Type edit after edit, each as soon as the previous one's run has started, until a newer edit has
    # caught a stale run (running: interrupted; queued: dropped).
    edits = [", red boats", ", blue sky", ", seagulls", ", storm clouds", ", lighthouse", ", dusk", ", fog", ", rain"]
    typed = 0
    for text in edits:
        queued = _stats(editor)["queued"]
        _focus_prompt(editor, renderer, text_id)  # each time: the editor may have taken focus back
        editor.page.keyboard.type(text, delay=10)
        typed += 1
        assert editor.node_js(text_id, "(n) => n.widgets[0].value").endswith(text), "the typed edit did not land"
        _wait_or_explain(editor, "(n) => { const l = window.ADDTurboLive; return l.stats.queued > n"
                                 " && (l.pending.size === 0 || l.pending.has(l.running)); }", queued)
        stats = _stats(editor)
        if typed >= 3 and stats["interrupted"] + stats["dropped"] >= 1:
            break
    _wait_live_idle(editor, server)

    stats = _stats(editor)
    final_text = editor.node_js(text_id, "(n) => n.widgets[0].value")
    new = {k: v for k, v in _history(server).items() if k not in before}
    completed = [v for v in new.values() if v["status"].get("status_str") == "success"]
    last = max(completed, key=lambda v: v["prompt"][0])
    last_text = next(n["inputs"]["text"] for n in last["prompt"][2].values() if n["class_type"] == "CLIPTextEncode")
    assert sample_id in last["prompt"][2]  # the sampler ran under its execution id (inside the subgraph)
    print(f"\nLIVE {frontend_server.frontend}/{renderer}/{layout}: edits typed: {typed} (changes seen: {stats['edits']}),"
          f" runs queued: {stats['queued']}, completed: {len(completed)}, interrupted: {stats['interrupted']},"
          f" dropped from queue: {stats['dropped']}; final image from the last text: {last_text == final_text}")
    assert last_text == final_text and final_text.endswith(edits[typed - 1])
    assert stats["queued"] >= 2
    assert stats["interrupted"] + stats["dropped"] >= 1
    assert len(completed) < stats["queued"]  # stale runs did not all run to the end

    # The last image on the Save Image node, the last run's time on the sampler (inside its subgraph).
    filename = last["outputs"][save_id]["images"][0]["filename"]
    _expect_image_shown(editor, renderer, save_id, filename)
    shot = f"live_{host.HOST}_{frontend_server.frontend}_{renderer}_{layout}"
    if layout == "subgraph":
        editor.screenshot(f"{shot}_root.png")
        _open_subgraph_of(editor, sample_id)
    label = editor.node_js(sample_id, "(n) => n.addTurboLastRun")
    assert LAST_RUN.match(label), label
    _expect_label_shown(editor, renderer, sample_id, label)
    editor.screenshot(f"{shot}.png")
    assert editor.pack_errors() == [] and editor.page_errors() == []


def test_live_mode_off_queues_nothing(editor, frontend_server, tiny_models):
    server = frontend_server
    editor.load_workflow(_live_workflow(tiny_models))
    sample_id, text_id = editor.find_node("ADDTurboSample"), editor.find_node("CLIPTextEncode")
    editor.setting(DEBOUNCE_SETTING, 0)
    _set_live(editor, sample_id, True)
    _set_live(editor, sample_id, False)
    start, count = _stats(editor), len(_history(server))
    _focus_prompt(editor, "classic", text_id)
    editor.page.keyboard.type(", night, fog", delay=10)
    editor.wait("(id) => window.addTurboTest.node(id).widgets[0].value.endsWith('fog')", text_id, timeout=5)
    # Proving that nothing happens takes a wait: several poll turns with no debounce.
    editor.page.wait_for_timeout(600)
    assert _stats(editor) == start
    assert len(_history(server)) == count and _queue_empty(server)


def test_live_mode_reports_a_rejected_prompt_and_keeps_working(editor, frontend_server, tiny_models):
    server = frontend_server
    editor.load_workflow(_live_workflow(tiny_models))
    sample_id = _convert_to_subgraph(editor, editor.find_node("ADDTurboSample"))
    editor.setting(DEBOUNCE_SETTING, 0)
    _set_live(editor, sample_id, True)
    start = _stats(editor)

    # A value below the input's minimum: the server refuses the prompt (newer frontends make
    # api.queuePrompt throw PromptExecutionError).
    editor.node_js(sample_id, "(n) => { n.widgets.find(w => w.name === 'steps').value = 0; }")
    editor.wait("(n) => window.ADDTurboLive.stats.rejected > n", start["rejected"], timeout=WAIT_S)
    error = editor.js("() => window.ADDTurboLive.lastError")
    assert "ADDTurboSample" in error and "steps" in error, error
    assert any(kind == "warning" and "[ADD Turbo] live mode" in text for kind, text in editor.console)
    expect(editor.page.get_by_text("ADD Turbo live mode").first).to_be_visible(timeout=WAIT_S * 1000)

    # The next edit is queued and runs as usual.
    before = set(_history(server))
    editor.node_js(sample_id, "(n) => { n.widgets.find(w => w.name === 'steps').value = 2; }")
    editor.wait("(n) => window.ADDTurboLive.stats.queued > n", start["queued"], timeout=WAIT_S)
    _wait_live_idle(editor, server)
    new = [v for k, v in _history(server).items() if k not in before]
    assert [v["status"]["status_str"] for v in new] == ["success"]
    assert sample_id in new[0]["prompt"][2]
    assert editor.js("() => window.ADDTurboLive.lastError") is None
    assert LAST_RUN.match(editor.node_js(sample_id, "(n) => n.addTurboLastRun"))
    editor.screenshot(f"live_rejected_{host.HOST}_{frontend_server.frontend}.png")
    assert editor.pack_errors() == [] and editor.page_errors() == []


def test_live_mode_follows_links_across_subgraph_borders(editor, frontend_server, tiny_models):
    """The latent in one subgraph, the sampler in another: an edit inside the first still counts."""
    server = frontend_server
    editor.load_workflow(_live_workflow(tiny_models))
    # Empty Latent Image: the editor promotes none of its widgets to the subgraph node, so the
    # value stays inside (unlike a prompt's text or a seed).
    latent_id = _convert_to_subgraph(editor, editor.find_node("EmptyLatentImage"))
    sample_id = _convert_to_subgraph(editor, editor.find_node("ADDTurboSample"))
    assert latent_id.split(":")[0] != sample_id.split(":")[0], (latent_id, sample_id)
    editor.setting(DEBOUNCE_SETTING, 0)
    _set_live(editor, sample_id, True)
    start, before = _stats(editor), set(_history(server))
    editor.node_js(latent_id, "(n) => { n.widgets.find(w => w.name === 'width').value = 192; }")
    editor.wait("(n) => window.ADDTurboLive.stats.queued > n", start["queued"], timeout=WAIT_S)
    _wait_live_idle(editor, server)
    new = [v for k, v in _history(server).items() if k not in before]
    assert [v["status"]["status_str"] for v in new] == ["success"]
    assert new[0]["prompt"][2][latent_id]["inputs"]["width"] == 192
    assert editor.pack_errors() == [] and editor.page_errors() == []
