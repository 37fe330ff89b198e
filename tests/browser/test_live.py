"""Live (as-you-type) mode in the editor, on both frontends and both node renderers: edits converge to the
last one, live mode off queues nothing, a refused prompt is reported and the next edit runs."""

import re

import pytest
from playwright.sync_api import expect

from devkit import host
from tests.browser.helpers import (
    DEBOUNCE_SETTING,
    LAST_RUN,
    WAIT_S,
    convert_to_subgraph,
    expect_image_shown,
    expect_label_shown,
    focus_prompt,
    live_stats,
    live_workflow,
    open_subgraph_of,
    queue_empty,
    server_history,
    set_live,
    wait_live_idle,
    wait_or_explain,
)


# The classic renderer with the subgraph is covered by the rejected-prompt test below.
@pytest.mark.parametrize("renderer_view,layout", [("classic", "root"), ("vue", "subgraph")], indirect=["renderer_view"])
def test_live_mode_converges_to_the_last_edit_and_shows_image_and_label(editor, frontend_server, tiny_models,
                                                                        renderer_view, layout):
    server, renderer = frontend_server, renderer_view
    editor.load_workflow(live_workflow(tiny_models))
    if renderer == "vue":
        editor.set_vue_nodes(True)
    sample_id = editor.find_node("ADDTurboSample")
    text_id, save_id = editor.find_node("CLIPTextEncode"), editor.find_node("SaveImage")
    if layout == "subgraph":
        sample_id = convert_to_subgraph(editor, sample_id)
        assert re.fullmatch(r"\d+:\d+", sample_id), sample_id
    editor.fit_view()
    editor.setting(DEBOUNCE_SETTING, 150)
    before = set(server_history(server))
    set_live(editor, sample_id, True)

    # Type edit after edit, each as soon as the previous one's run has started, until a newer edit has
    # caught a stale run (running: interrupted; queued: dropped).
    edits = [", red boats", ", blue sky", ", seagulls", ", storm clouds", ", lighthouse", ", dusk", ", fog", ", rain"]
    typed = 0
    for text in edits:
        queued = live_stats(editor)["queued"]
        focus_prompt(editor, renderer, text_id)  # each time: the editor may have taken focus back
        editor.page.keyboard.type(text, delay=10)
        typed += 1
        assert editor.node_js(text_id, "(n) => n.widgets[0].value").endswith(text), "the typed edit did not land"
        wait_or_explain(editor, "(n) => { const l = window.ADDTurboLive; return l.stats.queued > n"
                                 " && (l.pending.size === 0 || l.pending.has(l.running)); }", queued)
        stats = live_stats(editor)
        if typed >= 3 and stats["interrupted"] + stats["dropped"] >= 1:
            break
    wait_live_idle(editor, server)

    stats = live_stats(editor)
    final_text = editor.node_js(text_id, "(n) => n.widgets[0].value")
    new = {k: v for k, v in server_history(server).items() if k not in before}
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
    expect_image_shown(editor, renderer, save_id, filename)
    shot = f"live_{host.HOST}_{frontend_server.frontend}_{renderer}_{layout}"
    if layout == "subgraph":
        editor.screenshot(f"{shot}_root.png")
        open_subgraph_of(editor, sample_id)
    label = editor.node_js(sample_id, "(n) => n.addTurboLastRun")
    assert LAST_RUN.match(label), label
    expect_label_shown(editor, renderer, sample_id, label)
    editor.screenshot(f"{shot}.png")
    assert editor.pack_errors() == [] and editor.page_errors() == []


def test_live_mode_off_queues_nothing(editor, frontend_server, tiny_models):
    server = frontend_server
    editor.load_workflow(live_workflow(tiny_models))
    sample_id, text_id = editor.find_node("ADDTurboSample"), editor.find_node("CLIPTextEncode")
    editor.setting(DEBOUNCE_SETTING, 0)
    set_live(editor, sample_id, True)
    assert editor.js("() => window.ADDTurboLive.poll !== null")  # values written by code are read while live
    set_live(editor, sample_id, False)
    assert editor.js("() => window.ADDTurboLive.poll === null")  # no live node: nothing polls
    start, count = live_stats(editor), len(server_history(server))
    focus_prompt(editor, "classic", text_id)
    editor.page.keyboard.type(", night, fog", delay=10)
    editor.wait("(id) => window.addTurboTest.node(id).widgets[0].value.endsWith('fog')", text_id, timeout=5)
    # Proving that nothing happens takes a wait: the change events have come and gone, with no debounce.
    editor.page.wait_for_timeout(600)
    assert live_stats(editor) == start
    assert len(server_history(server)) == count and queue_empty(server)


def test_live_mode_reports_a_rejected_prompt_and_keeps_working(editor, frontend_server, tiny_models):
    server = frontend_server
    editor.load_workflow(live_workflow(tiny_models))
    sample_id = convert_to_subgraph(editor, editor.find_node("ADDTurboSample"))
    editor.setting(DEBOUNCE_SETTING, 0)
    set_live(editor, sample_id, True)
    start = live_stats(editor)

    # A value below the input's minimum: the server refuses the prompt (newer frontends make
    # api.queuePrompt throw PromptExecutionError).
    editor.node_js(sample_id, "(n) => { n.widgets.find(w => w.name === 'steps').value = 0; }")
    editor.wait("(n) => window.ADDTurboLive.stats.rejected > n", start["rejected"], timeout=WAIT_S)
    error = editor.js("() => window.ADDTurboLive.lastError")
    assert "ADDTurboSample" in error and "steps" in error, error
    assert any(kind == "warning" and "[ADD Turbo] live mode" in text for kind, text in editor.console)
    expect(editor.page.get_by_text("ADD Turbo live mode").first).to_be_visible(timeout=WAIT_S * 1000)

    # The next edit is queued and runs as usual.
    before = set(server_history(server))
    editor.node_js(sample_id, "(n) => { n.widgets.find(w => w.name === 'steps').value = 2; }")
    editor.wait("(n) => window.ADDTurboLive.stats.queued > n", start["queued"], timeout=WAIT_S)
    wait_live_idle(editor, server)
    new = [v for k, v in server_history(server).items() if k not in before]
    assert [v["status"]["status_str"] for v in new] == ["success"]
    assert sample_id in new[0]["prompt"][2]
    assert editor.js("() => window.ADDTurboLive.lastError") is None
    assert LAST_RUN.match(editor.node_js(sample_id, "(n) => n.addTurboLastRun"))
    editor.screenshot(f"live_rejected_{host.HOST}_{frontend_server.frontend}.png")
    assert editor.pack_errors() == [] and editor.page_errors() == []
