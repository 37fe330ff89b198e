"""The editor in a real headless Chromium (Debian's package, driven by Playwright) against a real server,
once with the frontend the host ships ("bundled") and once with the newest frontend ("newest")."""

import json
import re
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import expect

from devkit import host
from devkit.client import ComfyClient

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
DEBOUNCE_SETTING = "ADDTurbo.Live.DebounceMs"
LAST_RUN = re.compile(r"^last run \d+\.\d\d s$")
WAIT_S = 30  # bound for anything the editor or one run should do


def test_editor_opens_with_the_extension_and_no_pack_errors(editor):
    assert editor.js("() => window.app.extensions.some(e => e.name === 'ADDTurbo.Live')")
    assert editor.js("() => ['ADDTurboLoader','ADDTurboScheduler','ADDTurboSampler','ADDTurboSample','ADDTurboRefine']"
                     ".every(t => !!window.LiteGraph.registered_node_types[t])")
    assert editor.pack_errors() == []


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_every_workflow_loads_with_no_missing_nodes_and_its_values(editor, frontend_server, path):
    workflow = json.loads(path.read_text())
    for node in workflow["nodes"]:  # no missing-model dialog left over the canvas for the next tests
        node.get("properties", {}).pop("models", None)  # (test_workflow_files checks the download links)
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


def _use_tiny_checkpoint(loader: dict, tiny_models) -> None:
    """The loader node on the tiny model, without the real files' download links: the editor would
    otherwise offer their download in a dialog over the canvas (the workflows' checkpoint is not here)."""
    loader["widgets_values"][0] = tiny_models["sd_turbo"].single_file.name
    loader.get("properties", {}).pop("models", None)


def _live_workflow(tiny_models):
    workflow = json.loads((REPO / "workflows" / "SD-Turbo - text to image.json").read_text())
    for node in workflow["nodes"]:
        if node["type"] == "ADDTurboLoader":
            _use_tiny_checkpoint(node, tiny_models)
        if node["type"] == "ADDTurboSample":
            node["widgets_values"][2] = 6  # steps: a run lasts long enough for a newer edit to catch it running
        if node["type"] == "EmptyLatentImage":
            node["widgets_values"][:2] = [256, 256]  # but not so long that the test waits for long
    return workflow


def _history(server):
    with ComfyClient(server.url, events=False) as client:
        return client.history()


def _queue_empty(server):
    with ComfyClient(server.url, events=False) as client:
        queue = client.get_json("/queue")
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


def _wait_or_explain(editor, expression: str, arg, timeout: float = WAIT_S):
    """editor.wait, but a time-out names live mode's state (what it queued, what runs, what is pending)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        return editor.wait(expression, arg, timeout=timeout)
    except PlaywrightTimeout:
        state = editor.js("() => { const l = window.ADDTurboLive; return JSON.stringify({stats: l.stats, "
                          "running: l.running, pending: [...l.pending], lastError: String(l.lastError ?? ''),"
                          " continuous: l.continuous, halted: l.halted, fps: l.fps}); }")
        raise AssertionError(f"live mode did not get there in {timeout} s (waited for {arg}); its state: {state}")


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


# --- continuous mode (a stream) ------------------------------------------------------------------------

IMAGES = ("add_turbo_harbour.png", "add_turbo_harbour_masked.png")  # in the input folder (example_inputs)
FPS_LABEL = re.compile(r"^(\d+\.\d\d?) fps, last run \d+\.\d\d s$")
STREAM_WAIT_S = 120  # runs at CPU speed on a small machine, several in a row

# Every prompt the page queues, until the server reports its end: a record kept apart from live mode's
# own state, to check that a stream never has two runs in flight.
RECORD_QUEUE = """() => {
  const api = window.comfyAPI.api.api;
  const record = { calls: 0, inFlight: 0, maxInFlight: 0, ids: new Set(), ended: new Set(), queuePrompt: api.queuePrompt };
  record.onEnd = (event) => {
    const id = event.detail?.prompt_id;
    record.ended.add(id);
    if (record.ids.delete(id)) record.inFlight--;
  };
  api.queuePrompt = async function (...args) {
    record.calls++;
    record.maxInFlight = Math.max(record.maxInFlight, ++record.inFlight);
    let result;
    try {
      result = await record.queuePrompt.apply(this, args);
    } catch (error) {
      record.inFlight--;
      throw error;
    }
    const id = result?.prompt_id;
    if (id && !record.ended.has(id)) record.ids.add(id);
    else record.inFlight--;
    return result;
  };
  for (const type of ['execution_success', 'execution_error', 'execution_interrupted']) api.addEventListener(type, record.onEnd);
  window.addTurboQueueRecord = record;
}"""
STOP_RECORD = """() => {
  const api = window.comfyAPI.api.api, record = window.addTurboQueueRecord;
  api.queuePrompt = record.queuePrompt;
  for (const type of ['execution_success', 'execution_error', 'execution_interrupted']) api.removeEventListener(type, record.onEnd);
  delete window.addTurboQueueRecord;
}"""

# A camera for the built-in Webcam Capture: a canvas that changes colour, as a video stream. Media may
# only play without a user gesture when muted: mute the video the node plays the stream in.
FAKE_CAMERA = """() => {
  const canvas = Object.assign(document.createElement('canvas'), { width: 256, height: 256 });
  const context = canvas.getContext('2d');
  let frame = 0;
  const timer = setInterval(() => {
    context.fillStyle = `hsl(${(frame++ * 37) % 360} 80% 50%)`;
    context.fillRect(0, 0, 256, 256);
  }, 50);
  const stream = canvas.captureStream(20);
  const play = HTMLMediaElement.prototype.play;
  HTMLMediaElement.prototype.play = function () {
    if (this.srcObject === stream) this.muted = true;
    return play.apply(this, arguments);
  };
  navigator.mediaDevices.getUserMedia = async () => stream;
  window.addTurboCamera = { timer, stream, play };
}"""
STOP_CAMERA = """() => {
  const camera = window.addTurboCamera;
  clearInterval(camera.timer);
  camera.stream.getTracks().forEach((track) => track.stop());
  HTMLMediaElement.prototype.play = camera.play;
  delete navigator.mediaDevices.getUserMedia;
  delete window.addTurboCamera;
}"""

# A Webcam Capture node feeding the refine node's image (instead of Load Image); its execution id.
ADD_WEBCAM = """(refine) => {
  const camera = window.LiteGraph.createNode('WebcamCapture');
  camera.pos = [0, 520];
  refine.graph.add(camera);
  for (const name of ['width', 'height']) camera.widgets.find((w) => w.name === name).value = 256;
  camera.connect(0, refine, refine.inputs.findIndex((input) => input.name === 'image'));
  return String(camera.id);
}"""


def _img2img_workflow(tiny_models, steps):
    workflow = json.loads((REPO / "workflows" / "SD-Turbo - image to image.json").read_text())
    for node in workflow["nodes"]:
        if node["type"] == "ADDTurboLoader":
            _use_tiny_checkpoint(node, tiny_models)
        if node["type"] == "ADDTurboRefine":
            node["widgets_values"][2] = steps
        if node["type"] == "LoadImage":
            node["widgets_values"][0] = IMAGES[0]
    return workflow


@contextmanager
def _queue_record(editor):
    """Record the page's prompts in flight; yields a function that reads the record."""
    editor.js(RECORD_QUEUE)
    try:
        yield lambda: editor.js("() => { const r = window.addTurboQueueRecord;"
                                " return {calls: r.calls, inFlight: r.inFlight, maxInFlight: r.maxInFlight}; }")
    finally:
        editor.js(STOP_RECORD)


@contextmanager
def _fake_camera(editor):
    editor.js(FAKE_CAMERA)
    try:
        yield
    finally:
        editor.js(STOP_CAMERA)


def _set_continuous(editor, node_id, on):
    """Switch the node's continuous mode (with live mode off: the stream alone); live mode's stats at the switch."""
    stats = editor.node_js(node_id, "(n, on) => { n.widgets.find(w => w.name === 'continuous').value = on;"
                                    " return {...window.ADDTurboLive.stats}; }", on)
    editor.wait("([id, on]) => window.ADDTurboLive.continuous === on"
                " && (window.ADDTurboLive.liveKey || '').split(',').includes(id) === on", [node_id, on], timeout=5)
    return stats


def _expect_fps_label(editor, renderer, node_id):
    """The node's label shows the stream's frames per second, a positive number, on screen; live mode's fps.
    Matched by pattern, not text: a running stream may change the label between two looks."""
    fps = editor.js("() => window.ADDTurboLive.fps")
    label = editor.node_js(node_id, "(n) => n.addTurboLastRun")
    match = FPS_LABEL.match(label or "")
    assert match and fps > 0 and float(match[1]) > 0, (label, fps)
    if renderer == "vue":
        element = editor.page.locator(f'.lg-node[data-node-id="{node_id.split(":")[-1]}"] .add-turbo-label')
        expect(element).to_have_text(FPS_LABEL, timeout=WAIT_S * 1000)
        expect(element).to_be_visible()
    else:
        editor.js("() => { window.addTurboTest.drawnText.clear(); window.app.canvas.setDirty(true, true); }")
        editor.wait("(pattern) => [...window.addTurboTest.drawnText].some(t => new RegExp(pattern).test(t))",
                    FPS_LABEL.pattern, timeout=WAIT_S)
    return fps


@pytest.mark.parametrize("renderer_view", ["classic", "vue"], indirect=True)
def test_continuous_mode_streams_while_the_image_changes(editor, frontend_server, tiny_models, renderer_view):
    server, renderer = frontend_server, renderer_view
    editor.load_workflow(_img2img_workflow(tiny_models, steps=6))  # runs long enough to change the image during one
    if renderer == "vue":
        editor.set_vue_nodes(True)
    refine_id, image_id, save_id = (editor.find_node(t) for t in ("ADDTurboRefine", "LoadImage", "SaveImage"))
    editor.fit_view()
    before = set(_history(server))
    with _queue_record(editor) as record:
        _set_continuous(editor, refine_id, True)  # queues nothing by itself: no webcam upstream
        start = _stats(editor)

        # A new image each time the run of the last one has started, as a canvas being painted on (or the
        # mask editor saving) would: the change lands while a run is in flight and goes into the next run,
        # queued when that one ends.
        changes, during_run = 5, 0
        for k in range(changes):
            queued = _stats(editor)["queued"]
            during_run += editor.node_js(image_id, "(n, name) => { n.widgets.find(w => w.name === 'image').value = name;"
                                                   " return window.ADDTurboLive.pending.size > 0; }", IMAGES[(k + 1) % 2])
            _wait_or_explain(editor, "(n) => { const l = window.ADDTurboLive; return l.stats.queued > n"
                                     " && (l.pending.size === 0 || l.pending.has(l.running)); }", queued,
                             timeout=STREAM_WAIT_S)
        _wait_live_idle(editor, server, timeout=STREAM_WAIT_S)

        # Nothing changes any more: the stream stops. Proving that nothing happens takes a wait (poll turns).
        idle = _stats(editor)
        editor.page.wait_for_timeout(1000)
        assert _stats(editor) == idle and _queue_empty(server)
        recorded = record()

    stats = _stats(editor)
    new = sorted((v for k, v in _history(server).items() if k not in before), key=lambda v: v["prompt"][0])
    print(f"\nSTREAM {frontend_server.frontend}/{renderer}: changes: {changes} (during a run: {during_run}),"
          f" runs queued: {stats['queued'] - start['queued']}, fps: {editor.js('() => window.ADDTurboLive.fps')}")
    assert stats["streamed"] - start["streamed"] == changes and stats["queued"] - start["queued"] == changes
    assert stats["completed"] - start["completed"] == changes and stats["interrupted"] == start["interrupted"]
    assert recorded["calls"] == changes and recorded["maxInFlight"] == 1, recorded
    assert during_run >= 1  # at least one change arrived during a run and was queued as it ended
    assert [v["status"]["status_str"] for v in new] == ["success"] * changes
    assert [v["prompt"][2][image_id]["inputs"]["image"] for v in new] == [IMAGES[(k + 1) % 2] for k in range(changes)]

    filename = new[-1]["outputs"][save_id]["images"][0]["filename"]
    _expect_image_shown(editor, renderer, save_id, filename)
    _expect_fps_label(editor, renderer, refine_id)
    editor.screenshot(f"stream_{host.HOST}_{frontend_server.frontend}_{renderer}.png")

    # Continuous mode off (and live mode off): a new image queues nothing.
    _set_continuous(editor, refine_id, False)
    off = _stats(editor)
    editor.node_js(image_id, "(n, name) => { n.widgets.find(w => w.name === 'image').value = name; }", IMAGES[0])
    editor.page.wait_for_timeout(600)
    assert _stats(editor) == off and _queue_empty(server)
    assert editor.pack_errors() == [] and editor.page_errors() == []


def _host_webcam_defect() -> str | None:
    """Why the host's own Webcam Capture node cannot run a graph, read from its source; None if it can."""
    webcam = (host.COMFY_DIR / "comfy_extras" / "nodes_webcam.py").read_text()
    paths = (host.COMFY_DIR / "folder_paths.py").read_text()
    if "load_image(folder_paths.get_annotated_filepath(image))" in webcam and "Invalid file path" in paths:
        return ("this host's Webcam Capture fails on every run, with or without this pack: load_capture resolves the "
                "temp/webcam path and LoadImage.load_image resolves it again against input/, which its path check "
                "refuses ('Invalid file path')")
    return None


def test_continuous_mode_streams_a_webcam_until_turned_off(editor, frontend_server, tiny_models):
    """A Webcam Capture takes a new frame each run: the stream runs with no edit at all, one run at a time."""
    if (defect := _host_webcam_defect()) is not None:
        pytest.skip(defect)
    server = frontend_server
    editor.load_workflow(_img2img_workflow(tiny_models, steps=2))
    refine_id = editor.find_node("ADDTurboRefine")
    before = set(_history(server))
    with _fake_camera(editor), _queue_record(editor) as record:
        camera_id = editor.node_js(refine_id, ADD_WEBCAM)
        editor.fit_view()
        # Ready once the node has its video (its capture button is enabled).
        editor.wait("(id) => window.addTurboTest.node(id).widgets.some(w => w.type === 'button' && w.disabled === false)",
                    camera_id, timeout=WAIT_S)
        start = _stats(editor)
        _set_continuous(editor, refine_id, True)  # starts the stream: each run is a new frame
        _wait_or_explain(editor, "(n) => window.ADDTurboLive.stats.completed >= n", start["completed"] + 3,
                         timeout=STREAM_WAIT_S)
        fps = _expect_fps_label(editor, "classic", refine_id)
        editor.screenshot(f"stream_webcam_{host.HOST}_{frontend_server.frontend}.png")

        # Off: the run in flight (if any) ends, and no other one is queued.
        at_off = _set_continuous(editor, refine_id, False)
        _wait_live_idle(editor, server, timeout=STREAM_WAIT_S)
        idle = _stats(editor)
        editor.page.wait_for_timeout(1000)  # proving that nothing happens takes a wait (poll turns)
        assert _stats(editor) == idle and _queue_empty(server)
        recorded = record()

    runs = idle["queued"] - start["queued"]
    new = sorted((v for k, v in _history(server).items() if k not in before), key=lambda v: v["prompt"][0])
    print(f"\nWEBCAM STREAM {frontend_server.frontend}: runs: {runs}, fps: {fps:.2f}")
    assert runs >= 3 and idle["streamed"] - start["streamed"] == runs and idle["streamed"] == at_off["streamed"]
    assert recorded["calls"] == runs and recorded["maxInFlight"] == 1, recorded
    assert [v["status"]["status_str"] for v in new] == ["success"] * runs
    frames = [v["prompt"][2][camera_id]["inputs"]["image"] for v in new]
    assert all(f.startswith("webcam/") for f in frames) and len(set(frames)) == runs, frames
    assert editor.pack_errors() == [] and editor.page_errors() == []


BLOCKER_SIZES = (512, 1024, 2048)  # a longer run first, so the editor's three prompts wait in the queue together

# Each run's note and time label on a node as the run ends: the note as the run left it (the next run's
# start clears it), the time once live mode's own end handler has set it.
RECORD_LABELS = """(id) => {
  const api = window.comfyAPI.api.api;
  const record = { labels: {} };
  record.onEnd = (event) => {
    const node = window.addTurboTest.node(id), note = node.addTurboNote ?? null;
    setTimeout(() => { record.labels[event.detail.prompt_id] = [node.addTurboLastRun, note]; }, 0);
  };
  api.addEventListener('execution_success', record.onEnd);
  window.addTurboLabelRecord = record;
}"""
STOP_LABELS = """() => {
  const record = window.addTurboLabelRecord;
  window.comfyAPI.api.api.removeEventListener('execution_success', record.onEnd);
  delete window.addTurboLabelRecord;
  return record.labels;
}"""


def _set_widgets(editor, node_id, values: dict):
    editor.node_js(node_id, "(n, values) => { for (const [name, value] of Object.entries(values)) {"
                            " const w = n.widgets.find(w => w.name === name);"
                            " if (!w) throw new Error(`no widget ${name}`); w.value = value; } }", values)


def _queue_from_editor(editor):
    """Queue the graph as the editor's Queue button does."""
    editor.js("async () => { await window.app.extensionManager.command.execute('Comfy.QueuePrompt'); }")


def test_sampler_label_says_which_queued_prompts_shared_one_unet_call(editor, frontend_server, tiny_models):
    """Queued three times from the editor with other seeds, behind a longer run, with queue_batch on: the
    sampler's note says the first sampled all three in one UNet call and the others took their latents,
    next to each run's time (drawn above the node in both renderers); the next lone run has no note."""
    server = frontend_server
    editor.load_workflow(_live_workflow(tiny_models))
    loader_id, sample_id = editor.find_node("ADDTurboLoader"), editor.find_node("ADDTurboSample")
    _set_widgets(editor, loader_id, {"engine": "on"})
    _set_widgets(editor, sample_id, {"steps": 2, "queue_batch": 4})
    _set_widgets(editor, editor.find_node("EmptyLatentImage"), {"width": 64, "height": 64})
    editor.fit_view()
    seeds = (11, 12, 13)
    with ComfyClient(server.url, events=False) as client:
        for size in BLOCKER_SIZES:
            blocker = editor.js("async () => (await window.app.graphToPrompt()).output")
            blocker[sample_id]["inputs"].update(queue_batch=1, seed=99)
            latent_id = blocker[sample_id]["inputs"]["latent_image"][0]
            blocker[latent_id]["inputs"].update(width=size, height=size)
            editor.js(RECORD_LABELS, sample_id)
            blocker_id = client.queue(blocker)
            for seed in seeds:
                _set_widgets(editor, sample_id, {"seed": seed})
                _queue_from_editor(editor)
            queue = client.get_json("/queue")
            waited = [item[1] for item in queue["queue_running"]] == [blocker_id] and len(queue["queue_pending"]) == 3
            ids = [item[1] for item in sorted(queue["queue_pending"])]
            # Each run's label is recorded a moment after its end event (the blocker's go to its own client).
            editor.wait("(ids) => ids.every(i => i in window.addTurboLabelRecord.labels)", ids, timeout=300)
            labels = editor.js(STOP_LABELS)
            if waited:
                break
        else:
            raise AssertionError(f"the editor's prompts never waited together behind a blocker of up to {size} px")
        # Each entry is written just after the run's end event, which the labels waited for: wait for each.
        history = {i: client.history(i) for i in ids}

    assert [history[i]["prompt"][2][sample_id]["inputs"]["seed"] for i in ids] == list(seeds)
    notes = [history[i]["outputs"][sample_id]["text"][0] for i in ids]
    assert notes[0] == "sampled with 2 queued prompt(s) in one UNet call (seeds 11, 12, 13)", notes
    assert all(LAST_RUN.match(labels[i][0]) for i in ids), labels
    assert [labels[i][1] for i in ids] == ["3 prompts in one UNet call"] + ["sampled ahead in a queued batch"] * 2
    last_run, note = labels[ids[-1]]
    _expect_label_shown(editor, "classic", sample_id, note)
    _expect_label_shown(editor, "classic", sample_id, last_run)
    editor.screenshot(f"queue_batch_{host.HOST}_{frontend_server.frontend}_classic.png")
    editor.set_vue_nodes(True)
    try:
        _expect_label_shown(editor, "vue", sample_id, f"{last_run} · {note}")
        editor.screenshot(f"queue_batch_{host.HOST}_{frontend_server.frontend}_vue.png")
    finally:
        editor.set_vue_nodes(False)

    # The next run, alone, shows its time only: a note belongs to the run that sent it.
    _set_widgets(editor, sample_id, {"queue_batch": 1, "seed": 14})
    editor.js(RECORD_LABELS, sample_id)
    _queue_from_editor(editor)
    editor.wait("() => Object.keys(window.addTurboLabelRecord.labels).length === 1", timeout=WAIT_S)
    (alone,) = editor.js(STOP_LABELS).values()
    assert LAST_RUN.match(alone[0]) and alone[1] is None, alone
    print(f"\nQUEUE BATCH LABELS {frontend_server.frontend}: {[' · '.join(labels[i]) for i in ids]}")
    assert editor.pack_errors() == [] and editor.page_errors() == []
