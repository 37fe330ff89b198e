"""python -m add_turbo batch --ray: Ray on this machine (2 CPUs), two workers of one CPU each, each owning a
real ComfyUI. Every item lands exactly once and equals the lone `run` of its seed, through a killed
ComfyUI and a killed actor; a worker that cannot start is named, not waited for."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from add_turbo.headless import cli as add_turbo_cli
from add_turbo.headless.batch import pixel_hash
from add_turbo.headless.batch_worker import thread_env
from add_turbo.headless.ray_batch import NAMESPACE
from add_turbo.headless.server import free_port
from devkit import host
from devkit.ray_nodes import kill_processes_naming
from tests.support.batch import (
    REPO,
    cli_env,
    comfy_args,
    interrupt_after,
    item_lines,
    lone_pixel_hashes,
    manifest,
    write_prompt,
)

ray = pytest.importorskip("ray", reason="the host build installs ray (scripts/requirements-dev.txt)")

SEEDS = range(12)


@pytest.fixture(scope="module")
def ray_cluster():
    """Ray on this machine with 2 CPUs; the workers' ComfyUIs get the host's stand-ins on their path."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", cli_env()["PYTHONPATH"])
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True)
        yield ray
        ray.shutdown()


@pytest.fixture(scope="module")
def workflow(tiny_models, tmp_path_factory):
    return write_prompt(tmp_path_factory.mktemp("batch") / "prompt.json", tiny_models["sd_turbo"].single_file.name)


@pytest.fixture(scope="module")
def lone(workflow, tiny_models, tmp_path_factory):
    """seed -> pixel hash of the lone `run`, on a server with one torch thread like each worker."""
    srv = host.start_server(env=thread_env(1))
    try:
        return lone_pixel_hashes(workflow, srv.url, SEEDS, tmp_path_factory.mktemp("lone"))
    finally:
        srv.stop()


def batch(workflow, out, *extra):
    """The 12-seed sweep on two workers; rendering waits for both, so that each takes items whatever the
    machine's speed."""
    return add_turbo_cli.main(["batch", str(workflow), "--out", str(out), "--sweep", f"ADDTurboSample.seed=0:{len(SEEDS)}",
                               "--ray", "--workers", "2", "--min-workers", "2", "--cpus-per-worker", "1",
                               "--comfyui", str(host.COMFY_DIR),
                               "--comfyui-args", comfy_args(), *extra])


def assert_every_image_once(out, lone) -> list[dict]:
    _, lines = manifest(out)
    assert sorted(line["index"] for line in lines) == list(SEEDS)  # each item exactly once
    assert sorted(p.name for p in out.glob("*.png")) == sorted(line["files"][0] for line in lines)
    for line in lines:
        assert line["status"] == "done", line
        assert pixel_hash((out / line["files"][0]).read_bytes()) == line["pixels_sha256"][0] == lone[line["index"]]
    return lines


def test_ctrl_c_stops_the_workers_and_the_rerun_renders_exactly_the_rest(workflow, lone, tmp_path):
    """The driver in a process of its own (Ray started there: --ray), interrupted once 3 images have
    landed; the sweep is long enough that the signal always comes before its end. Runs before the
    module's in-process Ray starts, so that the two never share the machine."""
    out, count = tmp_path / "out", 60
    command = [sys.executable, "-m", "add_turbo", "batch", str(workflow), "--out", str(out),
               "--sweep", f"ADDTurboSample.seed=0:{count}", "--ray", "--workers", "2", "--cpus-per-worker", "1",
               "--comfyui", str(host.COMFY_DIR), "--comfyui-args", comfy_args()]
    code, stderr = interrupt_after(command, out)
    k = len(manifest(out)[1])
    assert code == 130 and 3 <= k < count, (code, k, stderr[-3000:])
    rerun = subprocess.run(command, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{count - k} done, {k} skipped" in rerun.stderr
    _, lines = manifest(out)
    assert sorted(line["index"] for line in lines) == list(range(count))  # each item exactly once
    assert sorted(p.name for p in out.glob("*.png")) == sorted(line["files"][0] for line in lines)
    assert all(line["pixels_sha256"][0] == lone[line["index"]] for line in lines if line["index"] in lone)


def test_joins_a_cluster_started_with_ray_start(workflow, lone, tmp_path):
    """--ray auto (as docs/cli.md's two-node example on the head node): the driver joins the cluster that
    `ray start --head` started; the workers find the pack through the runtime environment the driver
    gives them. (Ray 2.60's `ray start` turns token authentication on; `auto` finds the cluster's mode.)"""
    ray_cli = str(Path(sys.executable).with_name("ray"))
    port = str(free_port())
    # a temp dir of its own (short: Ray's socket paths have a length limit) names this cluster's processes
    temp_dir = tempfile.mkdtemp(prefix="atray", dir="/tmp")
    started = subprocess.run([ray_cli, "start", "--head", "--port", port, "--num-cpus", "2", "--include-dashboard",
                              "false", "--disable-usage-stats", "--temp-dir", temp_dir],
                             capture_output=True, text=True, timeout=180, env=cli_env())
    assert started.returncode == 0, started.stderr[-3000:]
    try:
        out = tmp_path / "out"
        result = subprocess.run(
            [sys.executable, "-m", "add_turbo", "batch", str(workflow), "--out", str(out), "--sweep",
             "ADDTurboSample.seed=0:4", "--ray", "auto", "--cpus-per-worker", "1",
             "--comfyui", str(host.COMFY_DIR), "--comfyui-args", comfy_args()],
            cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "4 done, 0 skipped" in result.stderr and "; 2 worker(s): w1 on " in result.stderr
        lines = manifest(out)[1]
        assert all(line["pixels_sha256"][0] == lone[line["index"]] for line in lines) and len(lines) == 4
    finally:
        assert kill_processes_naming(temp_dir) > 0  # never `ray stop`: it would kill every Ray on the machine
        shutil.rmtree(temp_dir, ignore_errors=True)


def _parsed(text: str) -> dict | None:
    """A manifest line, or None while it is still being written."""
    try:
        return json.loads(text)
    except ValueError:
        return None


def _lines(out):
    return item_lines(out)


def test_two_workers_render_the_sweep_each_image_equal_to_its_lone_run(ray_cluster, workflow, lone, tmp_path, capfd):
    assert batch(workflow, tmp_path / "out") == 0
    lines = assert_every_image_once(tmp_path / "out", lone)
    assert {line["worker"] for line in lines} == {"w1", "w2"}
    assert "12 done, 0 skipped" in capfd.readouterr().err


def _kill_after_first_image(out, worker, kill):
    """In the background: once `worker` has landed an image, kill() with that manifest line."""
    def watch():
        deadline = time.time() + 300
        while time.time() < deadline:
            first = next((line for line in map(_parsed, _lines(out)) if line and line["worker"] == worker), None)
            if first is not None:
                kill(first)
                return
            time.sleep(0.02)
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def _restarted_and_retried(lines, worker, before_pid):
    mine = [line for line in lines if line["worker"] == worker]
    after = [line for line in mine if line["server_pid"] != before_pid]
    print(f"\nworker {worker}: {len(mine)} images, {len(after)} after the restart (ComfyUI pid {before_pid} -> "
          f"{sorted({line['server_pid'] for line in after})}); retried items: "
          f"{[(line['index'], line['attempt']) for line in lines if line['attempt'] > 1]}")
    assert after, "the restarted worker made none"


def _sweep_with_a_kill(workflow, lone, out, kill) -> list[dict]:
    """The 12-seed sweep while kill(pid of w2's ComfyUI) strikes after w2's first image: every image once,
    and w2 made some after its restart."""
    killed = []
    watcher = _kill_after_first_image(out, "w2", lambda line: (killed.append(line["server_pid"]), kill(line)))
    assert batch(workflow, out) == 0
    watcher.join(timeout=1)
    lines = assert_every_image_once(out, lone)
    _restarted_and_retried(lines, "w2", killed[0])
    return lines


def test_a_killed_comfyui_is_restarted_and_its_item_retried(ray_cluster, workflow, lone, tmp_path, capfd):
    lines = _sweep_with_a_kill(workflow, lone, tmp_path / "out", lambda line: os.kill(line["server_pid"], signal.SIGKILL))
    err = capfd.readouterr().err
    # the workers' own log (Ray forwards it to the driver, as it comes): the restart and the retry
    print("\n".join(line for line in err.replace("\r", "\n").splitlines() if "ADD Turbo batch" in line or "raylet" in line))
    assert "lost its ComfyUI" in err or "after a restart" in err or any(line["attempt"] > 1 for line in lines), err


def test_a_killed_actor_is_restarted_and_its_item_retried(ray_cluster, workflow, lone, tmp_path):
    def kill(line):
        names = ray.util.list_named_actors(all_namespaces=True)
        name = next(n["name"] for n in names if n["namespace"] == NAMESPACE and n["name"].endswith("_w2"))
        ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=False)

    _sweep_with_a_kill(workflow, lone, tmp_path / "out", kill)


def test_a_refused_item_is_recorded_failed_once_and_not_retried(ray_cluster, workflow, tmp_path, capfd):
    out = tmp_path / "out"
    code = add_turbo_cli.main(["batch", str(workflow), "--out", str(out), "--sweep", "ADDTurboSample.steps=1,0,2,3",
                               "--ray", "--workers", "2", "--min-workers", "2", "--cpus-per-worker", "1",
                               "--comfyui", str(host.COMFY_DIR),
                               "--comfyui-args", comfy_args()])
    err = capfd.readouterr().err
    assert code == 1 and "3 done, 0 skipped" in err and "1 failed" in err, err
    _, lines = manifest(out)
    assert sorted(line["index"] for line in lines) == [0, 1, 2, 3]
    (failed,) = [line for line in lines if line["status"] == "failed"]
    assert failed["index"] == 1 and "steps" in failed["error"] and failed["attempt"] == 1 and failed["files"] == []


def test_a_worker_that_cannot_start_is_named_with_its_log(ray_cluster, workflow, tmp_path, capfd):
    start = time.time()
    code = batch(workflow, tmp_path / "out", "--comfyui-args", f"{comfy_args()} --port not-a-port")
    err = capfd.readouterr().err
    assert code == 1, err
    assert "worker w1 on node" in err and "did not start: ComfyUI exited during start-up" in err, err
    assert "invalid int value: 'not-a-port'" in err  # the last lines of its log
    assert time.time() - start < 240
    assert manifest(tmp_path / "out")[1] == []  # nothing rendered, nothing recorded
    # no ComfyUI at all where --comfyui points
    code = batch(workflow, tmp_path / "out", "--comfyui", str(tmp_path / "no-comfyui"))
    err = capfd.readouterr().err
    assert code == 1 and "worker w1 on node" in err and f"no ComfyUI at {tmp_path / 'no-comfyui'}" in err, err
