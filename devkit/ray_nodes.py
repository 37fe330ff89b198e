"""A Ray cluster of real nodes on one machine: each node in a Linux network namespace of its own, on its own
address, joined to the others through a bridge (`ip netns`, veth pairs). Needs root.

A node is killed by the PIDs inside its namespace (`ip netns pids`), never with `ray stop`, which kills every
Ray process on the machine. Token authentication as `ray start` sets it up, with a token of the cluster's
own in RAY_AUTH_TOKEN (nothing is written to ~/.ray).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

# The head's health check, 1 s x 3 (Ray's default 3 s x 5): a killed node is marked dead in seconds.
HEALTH_CHECK = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
                "RAY_health_check_timeout_ms": "1000"}
OBJECT_STORE = str(80 * 1024 * 1024)  # bytes per node: PNGs of 64 px pass through it


def can_make_namespaces() -> str | None:
    """None where network namespaces can be made here, else why not (for pytest.skip)."""
    if os.geteuid() != 0:
        return "needs root for ip netns (each Ray node in a network namespace of its own)"
    if shutil.which("ip") is None:
        return "needs the ip command (iproute2) for the network namespaces"
    return None


def _kill_until_gone(pids, what: str, timeout: float) -> int:
    """SIGKILL the processes pids() lists until it lists none; how many were killed."""
    deadline, killed = time.monotonic() + timeout, set()
    while found := pids():
        assert time.monotonic() < deadline, f"processes of {what} still alive after {timeout} s: {found}"
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    return len(killed)


def kill_processes_naming(text: str, timeout: float = 30) -> int:
    """SIGKILL every process whose command line holds `text` (a Ray session's --temp-dir: its daemons and
    workers name it), until none is left; how many were killed. The Ray of one test, not every Ray here."""
    def naming() -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                try:
                    if text.encode() in (entry / "cmdline").read_bytes():
                        found.append(int(entry.name))
                except OSError:
                    pass  # gone meanwhile
        return found

    return _kill_until_gone(naming, text, timeout)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


class NetnsCluster:
    """Namespaces <prefix>-<name> on 10.<net>.0.0/24 behind a bridge; the head (h) runs `ray start --head`.
    `env` is the environment of every Ray process and driver (the host's stand-ins on PYTHONPATH...)."""

    def __init__(self, names: list[str], env: dict, temp_dir: Path):
        self.prefix = f"at{os.getpid() % 100000}"
        net = 100 + os.getpid() % 100
        self.token = secrets.token_hex(16)
        self.env = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token, **HEALTH_CHECK}
        self.temp_dir = temp_dir
        self.ip = {name: f"10.{net}.0.{k + 1}" for k, name in enumerate(names)}
        self.bridge = f"{self.prefix}br"
        self.port = 6379
        self.ray = str(Path(sys.executable).with_name("ray"))
        self.made: list[str] = []
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("link", "set", self.bridge, "up")
        for name in names:
            ns = self.ns(name)
            _ip("netns", "add", ns)
            self.made.append(ns)
            _ip("link", "add", f"{ns}a", "type", "veth", "peer", "name", f"{ns}b")
            _ip("link", "set", f"{ns}a", "master", self.bridge, "up")
            _ip("link", "set", f"{ns}b", "netns", ns)
            _ip("-n", ns, "addr", "add", f"{self.ip[name]}/24", "dev", f"{ns}b")
            _ip("-n", ns, "link", "set", f"{ns}b", "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def ns(self, name: str) -> str:
        return f"{self.prefix}{name}"

    @property
    def address(self) -> str:
        return f"{self.ip['h']}:{self.port}"

    def in_ns(self, name: str, command: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns(name), *command]

    def start(self, name: str, cpus: int = 1) -> float:
        """`ray start` on node `name` (the head when name is h); the seconds it took."""
        start = time.monotonic()
        where = ["--head", "--port", str(self.port), "--include-dashboard", "false"] if name == "h" else [
            "--address", self.address]
        done = subprocess.run(self.in_ns(name, [self.ray, "start", *where, "--node-ip-address", self.ip[name],
                                                "--num-cpus", str(cpus), "--object-store-memory", OBJECT_STORE,
                                                "--temp-dir", str(self.temp_dir), "--disable-usage-stats"]),
                              env=self.env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, f"ray start on {name}: {done.stdout[-2000:]}{done.stderr[-3000:]}"
        return time.monotonic() - start

    def pids(self, name: str) -> list[int]:
        found = subprocess.run(["ip", "netns", "pids", self.ns(name)], capture_output=True, text=True, timeout=30)
        return [int(p) for p in found.stdout.split()]

    def kill(self, name: str, timeout: float = 30) -> None:
        """SIGKILL every process in node `name`'s namespace (the machine dies), until none is left."""
        _kill_until_gone(lambda: self.pids(name), f"node {name}", timeout)

    def close(self) -> None:
        for ns in reversed(self.made):
            self.kill(ns.removeprefix(self.prefix))
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=30)
            subprocess.run(["ip", "link", "delete", f"{ns}a"], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "delete", self.bridge], capture_output=True, timeout=30)
