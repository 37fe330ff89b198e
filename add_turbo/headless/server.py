"""Start and stop a ComfyUI server process on loopback: the one launcher of the CLI, the tests and the benches."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


class ServerStartError(RuntimeError):
    """The server could not be started; str() says why in one line (the log has the rest)."""


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child, before exec: ask the kernel for SIGKILL when the parent dies (prctl PR_SET_PDEATHSIG)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


class ComfyServer:
    """`python main.py --listen 127.0.0.1 --port PORT --disable-auto-launch ARGS` run from a ComfyUI folder.

    Output goes to `log_path` (discarded when None). Stop it with `stop()`. With `die_with_parent` (Linux)
    the kernel kills the server when the process that started it dies, even by SIGKILL: a batch worker
    killed by Ray leaves no ComfyUI behind.
    """

    def __init__(self, comfyui: Path, args: list[str] = (), port: int | None = None, python: str = sys.executable,
                 log_path: Path | None = None, env: dict | None = None, die_with_parent: bool = False):
        comfyui = Path(comfyui)
        if not (comfyui / "main.py").exists():
            raise ServerStartError(f"no ComfyUI at {comfyui} (no main.py there)")
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        command = [str(python), "main.py", "--listen", "127.0.0.1", "--port", str(self.port), "--disable-auto-launch",
                   *args]
        self._log = open(log_path if log_path is not None else os.devnull, "w")
        self.process = subprocess.Popen(command, cwd=comfyui, stdout=self._log, stderr=subprocess.STDOUT,
                                        env={**os.environ, **(env or {})},
                                        preexec_fn=_die_with_parent if die_with_parent and sys.platform == "linux" else None)

    def wait_ready(self, timeout: float = 180) -> "ComfyServer":
        """Poll /system_stats until the server answers; raises ServerStartError if it exits or times out."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise ServerStartError(f"ComfyUI exited during start-up (exit {self.process.returncode})"
                                       + (f"; its log: {self.log_path}" if self.log_path else ""))
            try:
                urllib.request.urlopen(self.url + "/system_stats", timeout=2)
                return self
            except OSError:
                time.sleep(0.3)
        raise ServerStartError(f"ComfyUI did not start in {timeout:.0f} s"
                               + (f"; its log: {self.log_path}" if self.log_path else ""))

    def log(self) -> str:
        """What the server printed so far ('' when its output is discarded)."""
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's log, for an error message."""
        return "\n".join(self.log().splitlines()[-lines:])

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()
