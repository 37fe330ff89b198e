"""What the editor makes of the pack's files: a PNG the CLI saved (its embedded workflow), and a template
whose checkpoint is missing (the loader's properties.models). Bundled and newest frontend, as test_editor."""

import base64
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import expect

from devkit import host
from devkit.client import ComfyClient

REPO = Path(__file__).resolve().parents[2]
TXT2IMG = REPO / "workflows" / "SD-Turbo - text to image.json"
WAIT_S = 60
EMPTY = {"last_node_id": 0, "last_link_id": 0, "nodes": [], "links": [], "groups": [], "config": {}, "extra": {},
         "version": 0.4}

DROP_FILE = """([selector, b64, name]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const data = new DataTransfer();
  data.items.add(new File([bytes], name, { type: 'image/png' }));
  const target = document.querySelector(selector);
  for (const type of ['dragenter', 'dragover', 'drop'])
    target.dispatchEvent(new DragEvent(type, { dataTransfer: data, bubbles: true, cancelable: true }));
}"""
# The links the page opens (a download opens the file's URL in a new tab), recorded instead of followed.
RECORD_LINKS = """() => {
  const click = HTMLAnchorElement.prototype.click;
  window.addTurboLinks = { click, opened: [] };
  HTMLAnchorElement.prototype.click = function () { window.addTurboLinks.opened.push({ href: this.href, download: this.download }); };
}"""
STOP_LINKS = """() => {
  HTMLAnchorElement.prototype.click = window.addTurboLinks.click;
  const opened = window.addTurboLinks.opened;
  delete window.addTurboLinks;
  return opened;
}"""


def _history(server):
    with ComfyClient(server.url, events=False) as client:
        return client.history()


def _image(png: bytes) -> Image.Image:
    return Image.open(io.BytesIO(png)).convert("RGB")


def test_a_png_the_cli_saved_opens_as_its_graph_and_runs_to_the_same_image(editor, frontend_server, tiny_models,
                                                                          tmp_path):
    server = frontend_server
    result = subprocess.run(
        [sys.executable, "-m", "add_turbo", "run", str(TXT2IMG), "--server", server.url, "--out", str(tmp_path),
         "--set", f"ADDTurboLoader.ckpt_name={tiny_models['sd_turbo'].single_file.name}", "--set", "4.seed=7",
         "--set", "CLIPTextEncode.text=a red fox", "--set", "3.width=64", "--set", "3.height=64"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(host.STUBS_DIR)})
    assert result.returncode == 0, result.stderr
    (png,) = [Path(line) for line in result.stdout.split()]

    editor.load_workflow(EMPTY)  # a canvas to drop onto
    editor.js(DROP_FILE, ["#graph-canvas", base64.b64encode(png.read_bytes()).decode(), png.name])
    editor.wait("() => window.app.graph._nodes.some(n => n.type === 'ADDTurboSample')", timeout=WAIT_S)
    nodes = editor.js("""() => window.app.graph._nodes.map(n => ({id: String(n.id), type: n.type,
        registered: !!window.LiteGraph.registered_node_types[n.type], values: (n.widgets || []).map(w => w.value)}))""")
    embedded = json.loads(Image.open(png).info["workflow"])
    assert sorted((n["id"], n["type"]) for n in nodes) == sorted((str(n["id"]), n["type"]) for n in embedded["nodes"])
    assert all(n["registered"] for n in nodes), [n for n in nodes if not n["registered"]]
    by_id = {n["id"]: n["values"] for n in nodes}
    assert by_id["4"][:2] == [7, "fixed"] and by_id["2"] == ["a red fox"] and by_id["3"] == [64, 64, 1]
    editor.fit_view()
    editor.screenshot(f"dropped_png_{host.HOST}_{frontend_server.frontend}.png")

    # Another seed in between, so that the editor's run samples afresh rather than from the server's cache.
    other = json.loads(Image.open(png).info["prompt"])
    other["4"]["inputs"]["seed"] = 8
    with ComfyClient(server.url) as client:
        assert client.run(other).error is None
    before = set(_history(server))
    editor.js("async () => { await window.app.extensionManager.command.execute('Comfy.QueuePrompt'); }")
    deadline = time.monotonic() + WAIT_S
    while not (new := [v for k, v in _history(server).items() if k not in before and v["status"].get("completed")]):
        assert time.monotonic() < deadline, "the editor's run did not finish"
        time.sleep(0.2)
    (entry,) = new
    assert entry["prompt"][2]["4"]["inputs"]["seed"] == 7
    cached = [nodes for kind, data in entry["status"]["messages"] if kind == "execution_cached" for nodes in data["nodes"]]
    assert "4" not in cached, cached
    (image,) = entry["outputs"]["6"]["images"]
    with ComfyClient(server.url, events=False) as client:
        again = _image(client.view(image))
    assert again.size == (64, 64) and again.tobytes() == _image(png.read_bytes()).tobytes()
    assert editor.pack_errors() == [] and editor.page_errors() == []


def test_a_template_without_its_checkpoint_offers_the_download(editor, frontend_server):
    """The newest editor lists the missing checkpoint with its folder, and its Download opens the model
    page's file URL (from the loader's properties.models; without it there is nothing to click)."""
    if frontend_server.frontend != "newest":
        pytest.skip("the missing-model panel with downloads is the newest frontend's (1.58.1)")
    workflow = json.loads(TXT2IMG.read_text())
    loader = next(n for n in workflow["nodes"] if n["type"] == "ADDTurboLoader")
    model = loader["properties"]["models"][0]
    assert model["name"] == loader["widgets_values"][0] == "sd_turbo.safetensors"  # not on the test server
    editor.load_workflow(workflow)
    page = editor.page
    expect(page.get_by_text("ADD Turbo Loader is missing a required model file").last).to_be_visible(
        timeout=WAIT_S * 1000)
    page.get_by_text("View details").last.click()
    rows = page.locator('[data-testid="missing-model-importable-rows"]')
    expect(rows).to_contain_text(model["name"], timeout=WAIT_S * 1000)
    expect(rows).to_contain_text("checkpoints")
    editor.screenshot(f"missing_model_{host.HOST}_{frontend_server.frontend}.png")
    editor.js(RECORD_LINKS)
    try:
        rows.locator('[data-testid="missing-model-download"]').click()
        editor.wait("() => window.addTurboLinks.opened.length > 0", timeout=WAIT_S)
    finally:
        opened = editor.js(STOP_LINKS)
        editor.setting("Comfy.RightSidePanel.IsOpen", False)
    assert opened == [{"href": model["url"], "download": model["name"]}]
    assert editor.pack_errors() == []
