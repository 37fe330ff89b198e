"""Continuous mode (a stream) in the editor: a run after each run while an image upstream changes, one run at
a time, the frames per second on the node; a webcam streams with no edit at all until turned off."""

import json
import re
from contextlib import contextmanager

import pytest
from playwright.sync_api import expect

from devkit import host
from tests.browser.helpers import (
    REPO,
    WAIT_S,
    expect_image_shown,
    live_stats,
    queue_empty,
    server_history,
    use_tiny_checkpoint,
    wait_live_idle,
    wait_or_explain,
)

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
            use_tiny_checkpoint(node, tiny_models)
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
    before = set(server_history(server))
    with _queue_record(editor) as record:
        _set_continuous(editor, refine_id, True)  # queues nothing by itself: no webcam upstream
        start = live_stats(editor)

        # A new image each time the run of the last one has started, as a canvas being painted on (or the
        # mask editor saving) would: the change lands while a run is in flight and goes into the next run,
        # queued when that one ends.
        changes, during_run = 5, 0
        for k in range(changes):
            queued = live_stats(editor)["queued"]
            during_run += editor.node_js(image_id, "(n, name) => { n.widgets.find(w => w.name === 'image').value = name;"
                                                   " return window.ADDTurboLive.pending.size > 0; }", IMAGES[(k + 1) % 2])
            wait_or_explain(editor, "(n) => { const l = window.ADDTurboLive; return l.stats.queued > n"
                                     " && (l.pending.size === 0 || l.pending.has(l.running)); }", queued,
                             timeout=STREAM_WAIT_S)
        wait_live_idle(editor, server, timeout=STREAM_WAIT_S)

        # Nothing changes any more: the stream stops. Proving that nothing happens takes a wait (poll turns).
        idle = live_stats(editor)
        editor.page.wait_for_timeout(1000)
        assert live_stats(editor) == idle and queue_empty(server)
        recorded = record()

    stats = live_stats(editor)
    new = sorted((v for k, v in server_history(server).items() if k not in before), key=lambda v: v["prompt"][0])
    print(f"\nSTREAM {frontend_server.frontend}/{renderer}: changes: {changes} (during a run: {during_run}),"
          f" runs queued: {stats['queued'] - start['queued']}, fps: {editor.js('() => window.ADDTurboLive.fps')}")
    assert stats["streamed"] - start["streamed"] == changes and stats["queued"] - start["queued"] == changes
    assert stats["completed"] - start["completed"] == changes and stats["interrupted"] == start["interrupted"]
    assert recorded["calls"] == changes and recorded["maxInFlight"] == 1, recorded
    assert during_run >= 1  # at least one change arrived during a run and was queued as it ended
    assert [v["status"]["status_str"] for v in new] == ["success"] * changes
    assert [v["prompt"][2][image_id]["inputs"]["image"] for v in new] == [IMAGES[(k + 1) % 2] for k in range(changes)]

    filename = new[-1]["outputs"][save_id]["images"][0]["filename"]
    expect_image_shown(editor, renderer, save_id, filename)
    _expect_fps_label(editor, renderer, refine_id)
    editor.screenshot(f"stream_{host.HOST}_{frontend_server.frontend}_{renderer}.png")

    # Continuous mode off (and live mode off): a new image queues nothing.
    _set_continuous(editor, refine_id, False)
    off = live_stats(editor)
    editor.node_js(image_id, "(n, name) => { n.widgets.find(w => w.name === 'image').value = name; }", IMAGES[0])
    editor.page.wait_for_timeout(600)
    assert live_stats(editor) == off and queue_empty(server)
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
    before = set(server_history(server))
    with _fake_camera(editor), _queue_record(editor) as record:
        camera_id = editor.node_js(refine_id, ADD_WEBCAM)
        editor.fit_view()
        # Ready once the node has its video (its capture button is enabled).
        editor.wait("(id) => window.addTurboTest.node(id).widgets.some(w => w.type === 'button' && w.disabled === false)",
                    camera_id, timeout=WAIT_S)
        start = live_stats(editor)
        _set_continuous(editor, refine_id, True)  # starts the stream: each run is a new frame
        wait_or_explain(editor, "(n) => window.ADDTurboLive.stats.completed >= n", start["completed"] + 3,
                         timeout=STREAM_WAIT_S)
        fps = _expect_fps_label(editor, "classic", refine_id)
        editor.screenshot(f"stream_webcam_{host.HOST}_{frontend_server.frontend}.png")

        # Off: the run in flight (if any) ends, and no other one is queued.
        at_off = _set_continuous(editor, refine_id, False)
        wait_live_idle(editor, server, timeout=STREAM_WAIT_S)
        idle = live_stats(editor)
        editor.page.wait_for_timeout(1000)  # proving that nothing happens takes a wait
        assert live_stats(editor) == idle and queue_empty(server)
        recorded = record()

    runs = idle["queued"] - start["queued"]
    new = sorted((v for k, v in server_history(server).items() if k not in before), key=lambda v: v["prompt"][0])
    print(f"\nWEBCAM STREAM {frontend_server.frontend}: runs: {runs}, fps: {fps:.2f}")
    assert runs >= 3 and idle["streamed"] - start["streamed"] == runs and idle["streamed"] == at_off["streamed"]
    assert recorded["calls"] == runs and recorded["maxInFlight"] == 1, recorded
    assert [v["status"]["status_str"] for v in new] == ["success"] * runs
    frames = [v["prompt"][2][camera_id]["inputs"]["image"] for v in new]
    assert all(f.startswith("webcam/") for f in frames) and len(set(frames)) == runs, frames
    assert editor.pack_errors() == [] and editor.page_errors() == []
