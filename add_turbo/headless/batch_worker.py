"""One batch worker: a ComfyUI server (started here, or one already running) that renders batch items,
keeping its models loaded from item to item. The local batch drives one directly; on Ray each actor
owns one (add_turbo.headless.ray_batch).

An item goes in as {"index", "prompt" (API format), "extra_data"}; an outcome comes out as {"index",
"status" ("done" or "failed"), "images" [(name, PNG bytes)], "error", "seconds" (the worker's, queue to
PNG fetched), "server_seconds" (the server's execution), "worker", "server_pid"}.
A refused or failed prompt is a failed outcome (the server's message kept); a server that is gone
raises (ServerUnreachable or aiohttp's errors), which the caller turns into a restart or a stop.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from .client import Client, PromptError
from .server import ComfyServer, ServerStartError


class WorkerStartError(RuntimeError):
    """A worker's ComfyUI did not start; str() names the worker, the reason and the log's last lines."""


class NoWorkerLeft(RuntimeError):
    """Every worker of a run is lost or failed, and none came back in time; str() says which and why."""


def thread_env(threads: int | None) -> dict:
    """Environment that limits a server's torch (OpenMP / MKL) threads to `threads`."""
    if not threads:
        return {}
    return {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


class Renderer:
    """Renders items on one ComfyUI: `url` of a running one, else one started from `comfyui` (with
    `comfyui_args`, `threads` torch threads and its log under `log_dir`) and stopped by close().

    Raises (on creation):
        WorkerStartError: the server could not be started.
    """

    def __init__(self, name: str, url: str | None = None, comfyui: Path | None = None, comfyui_args=(),
                 threads: int | None = None, log_dir: Path | None = None):
        self.name, self.server = name, None
        if url is None:
            log_dir = Path(log_dir or tempfile.gettempdir()) / "add_turbo_batch"
            log_dir.mkdir(parents=True, exist_ok=True)
            log_path = log_dir / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{id(self):x}.log"
            try:
                self.server = ComfyServer(comfyui, list(comfyui_args), log_path=log_path, env=thread_env(threads),
                                          die_with_parent=True)
                self.server.wait_ready()
            except ServerStartError as error:
                tail = self.server.log_tail() if self.server is not None else ""
                self._stop_server()
                raise WorkerStartError(f"worker {name}: ComfyUI at {comfyui} did not start: {error}"
                                       + (f"\n--- last lines of its log ({log_path}):\n{tail}" if tail else "")) from error
            except BaseException:  # Ctrl-C while it starts, or another failure: no half-started server left
                self._stop_server()
                raise
            url = self.server.url
        self.url = url
        self.loop = asyncio.new_event_loop()
        self.client = Client(url, progress=lambda data: None)
        try:
            self.loop.run_until_complete(self.client.__aenter__())
        except BaseException:
            self.loop.close()
            self._stop_server()
            raise

    def _stop_server(self) -> None:
        if self.server is not None:
            self.server.stop()

    @property
    def server_pid(self) -> int | None:
        return self.server.process.pid if self.server is not None else None

    def server_alive(self) -> bool:
        return self.server is None or self.server.process.poll() is None

    def object_info(self) -> dict:
        return self.loop.run_until_complete(self.client.object_info())

    def render(self, item: dict) -> dict:
        """Run one item's prompt; its outcome (see the module's docstring)."""
        start = time.perf_counter()
        outcome = {"index": item["index"], "worker": self.name, "server_pid": self.server_pid, "images": [],
                   "error": None}
        try:
            result = self.loop.run_until_complete(self.client.run(item["prompt"], item.get("extra_data")))
        except PromptError as error:
            return {**outcome, "status": "failed", "error": str(error), "seconds": time.perf_counter() - start}
        if not result.images:
            return {**outcome, "status": "failed", "seconds": time.perf_counter() - start,
                    "error": "the workflow saved no image (add a Save Image node)"}
        return {**outcome, "status": "done", "images": result.images, "seconds": time.perf_counter() - start,
                "server_seconds": result.server_seconds}

    def close(self) -> None:
        try:
            self.loop.run_until_complete(self.client.__aexit__(None, None, None))
        except Exception:  # noqa: BLE001 (closing a connection to a server that may be gone: nothing to save)
            pass
        self.loop.close()
        self._stop_server()

    def kill_server(self) -> None:
        """Stop the server at once (before this worker's process exits)."""
        if self.server is not None and self.server.process.poll() is None:
            self.server.process.kill()
