"""Screenshot every example workflow in the editor (headless Chromium) as its thumbnail: workflows/<name>.jpg/.png.

Real weights are not available here, so a thumbnail shows the graph, not its output.
Run in the host's Python from the repository root:
  ~/.cache/add-turbo/hosts/0.3.75/venv/bin/python -m scripts.make_thumbnails
"""

from __future__ import annotations

import json
from pathlib import Path

from devkit import host
from devkit.browser import Editor

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    from PIL import Image
    from playwright.sync_api import sync_playwright

    server = host.start_server()
    try:
        with sync_playwright() as playwright:
            editor = Editor(playwright, server.url, width=2000, height=1150)
            for setting, value in (("Comfy.Minimap.Visible", False), ("LiteGraph.Canvas.LowQualityRenderingZoomThreshold", 0.2)):
                editor.js("([k, v]) => window.app.extensionManager.setting.set(k, v)", [setting, value])
            for path in sorted((REPO / "workflows").glob("*.json")):
                editor.load_workflow(json.loads(path.read_text()))
                editor.js("() => document.querySelectorAll('.p-toast, .p-dialog-mask').forEach(e => e.remove())")
                editor.fit_view()
                shot = editor.screenshot(f"thumb_{path.stem}.png")
                image = Image.open(shot).convert("RGB").crop((60, 110, 2000, 1150))
                image.thumbnail((960, 540), Image.LANCZOS)
                image.save(path.with_suffix(".png"))
                image.save(path.with_suffix(".jpg"), quality=85)
                print(f"wrote {path.with_suffix('.png').relative_to(REPO)} and .jpg")
            editor.close()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
