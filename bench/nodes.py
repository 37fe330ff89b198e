"""Batch on two real Ray nodes: images/s of `python -m add_turbo batch --ray` on 1 node and on 2 nodes (each
node a network namespace of its own with 1 CPU, the driver on the head), and the same sweep with the second
node killed halfway (every process in its namespace: the machine dies), against the ideal.

The model: the full-size random SD-Turbo on the pack's CPU fast path at 512 px (bench.scale's "full").
- images/s: each worker's images after its first (model loading excluded), over its first to last finish,
  summed over the workers (bench.scale.steady_images_per_s).
- per-item overhead: a worker's time between two finishes beyond the server's execution of the later item
  (the history's timestamps): dispatch, the PNG back to the driver, the manifest.
- node lost: once half the items have landed, the second node is killed. The ideal for the rest: the items
  not landed at the kill at the head's rate alone (the 1-node run); the measured: the kill to the last image.
- peak RSS: every process of each node's namespace, summed, sampled every 0.5 s (Ray, the worker, ComfyUI).
Needs root (ip netns).

  scripts/bench.sh nodes                    # markdown to bench/results_nodes.md
  scripts/bench.sh nodes --items 8
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import scale
from devkit import host
from devkit.ray_nodes import NetnsCluster, can_make_namespaces

REPO = scale.REPO


class NodeMemory:
    """Peak RSS (GiB) of each node's processes together, sampled in a thread while a run goes."""

    def __init__(self, cluster: NetnsCluster, names: list[str]):
        self.cluster, self.names, self.peak = cluster, names, dict.fromkeys(names, 0.0)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    @staticmethod
    def _rss(pid: int) -> int:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass  # gone meanwhile
        return 0

    def _sample(self) -> None:
        while not self.stop.wait(0.5):
            for name in self.names:
                total = sum(self._rss(pid) for pid in self.cluster.pids(name))
                self.peak[name] = max(self.peak[name], total / 2**30)

    def close(self) -> dict:
        self.stop.set()
        self.thread.join()
        return self.peak


def _driver(cluster: NetnsCluster, workflow: Path, out: Path, items: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "add_turbo", "batch", str(workflow), "--out", str(out),
               "--sweep", f"ADDTurboSample.seed=0:{items}", "--ray", cluster.address, "--cpus-per-worker", "1",
               "--worker-timeout", "30", "--comfyui", str(host.COMFY_DIR), "--comfyui-args", " ".join(host.base_args())]
    with open(out.with_suffix(".log"), "w") as log:
        return subprocess.Popen(cluster.in_ns("h", command), cwd=REPO, env=cluster.env, stdout=subprocess.DEVNULL,
                                stderr=log)


def _lines(out: Path) -> list[dict]:
    path = out / "manifest.jsonl"
    parsed = []
    for text in path.read_text().splitlines()[1:] if path.exists() else []:
        try:
            parsed.append(json.loads(text))
        except ValueError:
            pass  # still being written
    return parsed


def per_item_overhead_ms(lines: list[dict]) -> float:
    """Mean over workers' consecutive finishes: the interval less the later item's server execution."""
    extra = []
    for worker in {line["worker"] for line in lines}:
        mine = sorted((line for line in lines if line["worker"] == worker), key=lambda line: line["finished_at"])
        extra += [b["finished_at"] - a["finished_at"] - b["server_seconds"] for a, b in itertools.pairwise(mine)]
    return 1000 * sum(extra) / len(extra)


def sweep(cluster: NetnsCluster, workflow: Path, out: Path, items: int, kill_after: int | None = None) -> dict:
    """One batch run; with kill_after, the second node is killed once that many images have landed."""
    memory = NodeMemory(cluster, list(cluster.ip))
    start = time.monotonic()
    proc, killed = _driver(cluster, workflow, out, items), None
    try:
        while proc.poll() is None:
            if kill_after is not None and killed is None and len(_lines(out)) >= kill_after:
                cluster.kill("w")
                killed = (time.time(), len(_lines(out)))
            time.sleep(0.05)
    finally:
        peak = memory.close()
    if proc.returncode != 0:
        raise RuntimeError(f"batch exited {proc.returncode}: {out.with_suffix('.log').read_text()[-3000:]}")
    lines = _lines(out)
    assert sorted(line["index"] for line in lines) == list(range(items)), "an item missing or twice"
    row = {"wall_s": time.monotonic() - start, "ips": scale.steady_images_per_s(lines),
           "overhead_ms": per_item_overhead_ms(lines), "peak_gib": peak,
           "images": {name: sum(line["node"] == ip for line in lines) for name, ip in cluster.ip.items()}}
    if killed is not None:
        row["killed_at"], row["landed_at_kill"] = killed
        row["after_kill_s"] = max(line["finished_at"] for line in lines) - killed[0]
    return row


def measure(items: int, folder: Path) -> dict:
    workflow = scale._workflow("full", folder)
    cluster = NetnsCluster(["h", "w"], scale._env(), Path(tempfile.mkdtemp(prefix="atb", dir="/tmp")))
    try:
        cluster.start("h")
        one = sweep(cluster, workflow, folder / "one", items)
        print(f"1 node: {one['ips']:.3f} images/s", flush=True)
        cluster.start("w")
        two = sweep(cluster, workflow, folder / "two", 2 * items)
        print(f"2 nodes: {two['ips']:.3f} images/s", flush=True)
        lost = sweep(cluster, workflow, folder / "lost", 2 * items, kill_after=items)
    finally:
        cluster.close()
    lost["ideal_s"] = (2 * items - lost["landed_at_kill"]) / one["ips"]
    return {"items": items, "one": one, "two": two, "lost": lost, "ratio": two["ips"] / one["ips"],
            "lost_vs_ideal": lost["after_kill_s"] / lost["ideal_s"]}


def report(r: dict, command: str) -> str:
    one, two, lost = r["one"], r["two"], r["lost"]

    def peaks(row):
        return ", ".join(f"{node} {gib:.2f}" for node, gib in row["peak_gib"].items())

    return "\n".join([
        "# Batch on two Ray nodes", "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}. `{command}`. Each node a "
        "network namespace with `ray start --num-cpus 1`, the driver on the head (h); full-size random SD-Turbo, "
        "512 px, the pack's CPU fast path, 1 worker x 1 CPU per node.", "",
        "| run | items | images/s | vs 1 node | per-item overhead, ms | wall, s | images per node | peak RSS per node, GiB |",
        "|---|---|---|---|---|---|---|---|",
        f"| 1 node | {r['items']} | {one['ips']:.3f} | 1.00x | {one['overhead_ms']:.0f} | {one['wall_s']:.0f} | "
        f"{one['images']} | {peaks(one)} |",
        f"| 2 nodes | {2 * r['items']} | {two['ips']:.3f} | {r['ratio']:.2f}x | {two['overhead_ms']:.0f} | "
        f"{two['wall_s']:.0f} | {two['images']} | {peaks(two)} |",
        f"| 2 nodes, w killed after {r['items']} images | {2 * r['items']} | {lost['ips']:.3f} | | "
        f"{lost['overhead_ms']:.0f} | {lost['wall_s']:.0f} | {lost['images']} | {peaks(lost)} |", "",
        f"Node lost: {lost['landed_at_kill']} images had landed at the kill; the rest took {lost['after_kill_s']:.1f} s "
        f"against an ideal of {lost['ideal_s']:.1f} s (the {2 * r['items'] - lost['landed_at_kill']} items left at the "
        "head's rate alone): "
        f"{r['lost_vs_ideal']:.2f}x.", ""])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=8, help="items of the 1-node run (the 2-node runs: twice)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results_nodes.md"))
    args = parser.parse_args()
    if (why := can_make_namespaces()) is not None:
        print(f"bench nodes: {why}", file=sys.stderr)
        return 2
    folder = Path(tempfile.mkdtemp(prefix="add_turbo_nodes_"))
    try:
        result = measure(args.items, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(result), flush=True)
    text = report(result, "scripts/bench.sh nodes " + " ".join(sys.argv[1:]))
    Path(args.out).write_text(text)
    Path(args.out).with_suffix(".json").write_text(json.dumps(result, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
