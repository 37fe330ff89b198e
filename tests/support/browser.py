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
        self.page.goto(url)
        self.page.wait_for_function("() => window.app?.graph && window.ADDTurboLive", timeout=60_000)

    def js(self, expression: str, arg=None):
        return self.page.evaluate(expression, arg)

    def load_workflow(self, workflow: dict) -> None:
        self.js("async (w) => { await window.app.loadGraphData(w); }", workflow)
        self.page.wait_for_timeout(300)

    def pack_errors(self) -> list:
        """Console errors and failed requests that come from this pack's extension or nodes."""
        ours = ("add-turbo", "add_turbo", "ADDTurbo")
        errors = [text for kind, text in self.console if kind in ("error", "pageerror") and any(o in text for o in ours)
                  # the editor's own registry look-ups of node ids, blocked offline by its CSP: not the pack's
                  and "Content Security Policy" not in text]
        return errors + [url for url in self.failed_urls if any(o in url for o in ours)]

    def fit_view(self) -> None:
        self.js("() => window.app.extensionManager.command.execute('Comfy.Canvas.FitView')")
        self.page.wait_for_timeout(300)

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / name
        self.page.screenshot(path=str(path))
        return path

    def close(self) -> None:
        self.browser.close()
