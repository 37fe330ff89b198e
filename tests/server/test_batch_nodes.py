"""python -m add_turbo batch --ray on a real two-node cluster: each node in a network namespace of its own
(devkit/ray_nodes.py), `ray start` in each, the driver on the head h (1 CPU); the second node w is
started, killed (every process in its namespace: the machine dies) and started again by the cases.

Where a case needs the sweep to outlast an event (a node joining, a node coming back) the head's ComfyUI is
paused (SIGSTOP) until the event is seen, so the order of events never depends on the machine's speed; the
item it holds lands once it resumes. Every case checks the manifest (every item once, none failed, the files
those of the manifest) and one image of the second node's share against the lone `run` of its seed.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from add_turbo.headless.batch import pixel_hash
from add_turbo.headless.batch_worker import thread_env
from add_turbo.headless.ray_pool import GROW_EVERY
from devkit import host
from devkit.ray_nodes import NetnsCluster, can_make_namespaces
from tests.support.batch import REPO, cli_env, comfy_args, item_lines, lone_pixel_hashes, manifest, write_prompt

pytest.importorskip("ray", reason="the host build installs ray (scripts/requirements-dev.txt)")
if (why := can_make_namespaces()) is not None:
    pytest.skip(why, allow_module_level=True)

ITEMS = 24
WORKER_TIMEOUT = 15  # s, --worker-timeout: a worker silent this long is lost; with none left, the run stops after it


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    nodes = NetnsCluster(["h", "w"], cli_env(), tmp_path_factory.mktemp("ray"))
    try:
        nodes.start("h")
        yield nodes
    finally:
        nodes.close()


@pytest.fixture
def node_w(cluster):
    """The second node is down when a case starts and when it ends."""
    cluster.kill("w")
    yield cluster
    cluster.kill("w")


@pytest.fixture(scope="module")
def workflow(tiny_models, tmp_path_factory):
    return write_prompt(tmp_path_factory.mktemp("nodes") / "prompt.json", tiny_models["sd_turbo"].single_file.name)


@pytest.fixture(scope="module")
def lone(workflow, tmp_path_factory):
    """lone(seed, threads): the pixel hash of the lone `run` of a seed, on a server with that many torch threads
    (as a worker of that many CPUs has)."""
    servers, hashes = {}, {}

    def hash_of(seed: int, threads: int = 1) -> str:
        if threads not in servers:
            servers[threads] = host.start_server(env=thread_env(threads))
        if (seed, threads) not in hashes:
            hashes[seed, threads] = lone_pixel_hashes(workflow, servers[threads].url, [seed],
                                                      tmp_path_factory.mktemp("lone"))[seed]
        return hashes[seed, threads]

    try:
        yield hash_of
    finally:
        for server in servers.values():
            server.stop()


class Driver:
    """`batch --ray <head>` in the head's namespace, its stderr in a file (read while it runs)."""

    def __init__(self, cluster, workflow, out, *extra):
        self.out, self.log = out, out.with_suffix(".log")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "add_turbo", "batch", str(workflow), "--out", str(out),
                   "--sweep", f"ADDTurboSample.seed=0:{ITEMS}", "--ray", cluster.address,
                   "--worker-timeout", str(WORKER_TIMEOUT), "--comfyui", str(host.COMFY_DIR),
                   "--comfyui-args", comfy_args(), *extra]
        self.started = time.monotonic()
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(cluster.in_ns("h", command), cwd=REPO, env=cluster.env, stderr=log,
                                         stdout=subprocess.DEVNULL)

    def lines(self) -> list[dict]:
        parsed = []
        for text in item_lines(self.out):
            try:
                parsed.append(json.loads(text))
            except ValueError:
                pass  # still being written
        return parsed

    def first(self, node: str, timeout: float = 240) -> dict:
        """The first manifest line rendered on `node`, once it lands."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((line for line in self.lines() if line["node"] == node), None)
            if found is not None:
                return found
            assert self.proc.poll() is None, f"the driver exited ({self.proc.returncode}) first:\n{self.stderr()}"
            time.sleep(0.02)
        raise AssertionError(f"no image from node {node} in {timeout} s:\n{self.stderr()}")

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the driver did not exit in {timeout:.0f} s:\n{self.stderr()}") from None

    def stderr(self) -> str:
        return self.log.read_text(errors="replace").replace("\r", "\n")[-5000:]


def per_item(lines: list[dict]) -> float:
    """The slowest item time of the landed images (their worker's seconds, model loading excluded)."""
    return max(line["seconds"] for line in sorted(lines, key=lambda line: line["finished_at"])[2:]) if len(lines) > 2 \
        else max(line["seconds"] for line in lines)


def check_sweep(out, lone, node: str, threads: int = 1) -> list[dict]:
    """Every item once and done, the files those of the manifest, and the first image of `node` (the second
    node's share) equal to the lone run of its seed."""
    _, lines = manifest(out)
    assert sorted(line["index"] for line in lines) == list(range(ITEMS))
    assert all(line["status"] == "done" for line in lines), [line for line in lines if line["status"] != "done"]
    assert sorted(p.name for p in out.glob("*.png")) == sorted(line["files"][0] for line in lines)
    for line in lines:
        assert pixel_hash((out / line["files"][0]).read_bytes()) == line["pixels_sha256"][0]
    mine = sorted((line for line in lines if line["node"] == node), key=lambda line: line["finished_at"])
    assert mine, f"node {node} rendered nothing"
    assert mine[0]["pixels_sha256"][0] == lone(mine[0]["index"], threads)
    return lines


def pause(pid: int):
    os.kill(pid, signal.SIGSTOP)
    return lambda: os.kill(pid, signal.SIGCONT)


def join_while_the_head_waits(cluster, driver) -> tuple:
    """Once the head has landed an image, pause its ComfyUI and start the second node; (resume, the second
    node's first manifest line, seconds from its `ray start` to that line, the head's seconds from the
    driver's start to its first image)."""
    first = driver.first(cluster.ip["h"])
    head_start = time.monotonic() - driver.started
    resume = pause(first["server_pid"])
    try:
        cluster.start("w")
        joined = time.monotonic()
        # Bound: GROW_EVERY, then twice the head's own start (Ray, a ComfyUI, the model loaded), plus 10 s.
        line = driver.first(cluster.ip["w"], timeout=GROW_EVERY + 2 * head_start + 10)
    except BaseException:
        resume()
        raise
    return resume, line, time.monotonic() - joined, head_start


def test_a_lost_node_s_items_finish_on_the_head(node_w, workflow, lone, tmp_path):
    """(a) The second node dies after its first image: its item goes to the head, which finishes the sweep.
    Bound, from the kill: the worker is found lost (the node marked dead, or --worker-timeout), then the items
    left at 10x the slowest item time seen, plus 30 s."""
    cluster, head, second = node_w, node_w.ip["h"], node_w.ip["w"]
    driver = Driver(cluster, workflow, tmp_path / "out")
    resume, _, _, _ = join_while_the_head_waits(cluster, driver)
    try:
        cluster.kill("w")
        killed, killed_at, left = time.monotonic(), time.time(), ITEMS - len(driver.lines())
    finally:
        resume()
    bound = WORKER_TIMEOUT + GROW_EVERY + left * 10 * per_item(driver.lines()) + 30
    assert driver.wait(bound) == 0, driver.stderr()
    took = time.monotonic() - killed
    lines = check_sweep(driver.out, lone, second)
    after = [line for line in lines if line["finished_at"] > killed_at]
    assert after and {line["node"] for line in after} == {head}, after
    assert "worker w2 on " in driver.stderr() and "lost" in driver.stderr(), driver.stderr()
    print(f"\n{left} items left at the kill, finished on the head in {took:.1f} s (bound {bound:.0f} s)")


def test_a_node_that_joins_mid_run_gets_a_worker_and_takes_items(node_w, workflow, lone, tmp_path):
    """(b) The run starts on the head alone; the second node joins while the head is paused, and its new
    worker renders (bound: join_while_the_head_waits)."""
    cluster, second = node_w, node_w.ip["w"]
    driver = Driver(cluster, workflow, tmp_path / "out")
    resume, _, took, head_start = join_while_the_head_waits(cluster, driver)
    resume()
    assert driver.wait(240) == 0, driver.stderr()
    check_sweep(driver.out, lone, second)
    assert "worker w2 starting" in driver.stderr() and "worker w2 up on node" in driver.stderr(), driver.stderr()
    print(f"\nthe joined node's first image {took:.1f} s after its ray start (the head's: {head_start:.1f} s)")


def test_a_lost_node_that_comes_back_takes_work_again(node_w, workflow, lone, tmp_path):
    """(c) The second node dies after its first image and is started again while the head is paused: the
    lost worker, restarted by Ray there, renders again."""
    cluster, second = node_w, node_w.ip["w"]
    driver = Driver(cluster, workflow, tmp_path / "out")
    resume, before, _, head_start = join_while_the_head_waits(cluster, driver)
    try:
        cluster.kill("w")
        cluster.start("w")
        # Bound: the node marked dead (--worker-timeout at most), GROW_EVERY, a restart as long as the head's.
        limit = time.monotonic() + WORKER_TIMEOUT + GROW_EVERY + 2 * head_start + 10
        while not any(line["node"] == second and line["server_pid"] != before["server_pid"] for line in driver.lines()):
            assert time.monotonic() < limit, f"the worker did not come back in time:\n{driver.stderr()}"
            time.sleep(0.05)
    finally:
        resume()
    assert driver.wait(240) == 0, driver.stderr()
    lines = check_sweep(driver.out, lone, second)
    again = [line for line in lines if line["node"] == second and line["server_pid"] != before["server_pid"]]
    assert {line["worker"] for line in again} == {before["worker"]}, again  # the same worker, restarted
    assert f"worker {before['worker']} back on node {second}" in driver.stderr(), driver.stderr()


def test_every_worker_lost_stops_the_run_and_the_rerun_finishes(node_w, workflow, lone, tmp_path):
    """(d) Workers of 2 CPUs: only the second node (2 CPUs) fits one, the head (1 CPU) none. The node dies:
    the run stops with one line and exit 1 within 2 x --worker-timeout (found lost, then none came back) plus
    GROW_EVERY and 20 s; with the node back, the same command finishes the job."""
    cluster, second = node_w, node_w.ip["w"]
    cluster.start("w", cpus=2)
    driver = Driver(cluster, workflow, tmp_path / "out", "--cpus-per-worker", "2")
    first = driver.first(second)
    os.kill(first["server_pid"], signal.SIGSTOP)  # no more images before the machine dies
    cluster.kill("w")
    killed = time.monotonic()
    bound = 2 * WORKER_TIMEOUT + GROW_EVERY + 20
    assert driver.wait(bound) == 1, driver.stderr()
    took = time.monotonic() - killed
    err, done = driver.stderr(), len(manifest(driver.out)[1])
    assert "no worker left" in err and f"{ITEMS - done} not rendered (no worker left: run the same command again " \
        "to finish)" in err, err
    cluster.start("w", cpus=2)
    rerun = Driver(cluster, workflow, tmp_path / "out", "--cpus-per-worker", "2")
    assert rerun.wait(240) == 0, rerun.stderr()
    assert f"{ITEMS - done} done, {done} skipped" in rerun.stderr(), rerun.stderr()
    check_sweep(driver.out, lone, second, threads=2)
    print(f"\nevery worker lost: the run stopped {took:.1f} s after the kill (bound {bound:.0f} s)")
