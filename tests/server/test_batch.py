"""python -m add_turbo batch without Ray: one ComfyUI renders a sweep in order, each image equal to the
lone `run` of its overrides, a manifest line each, resumable; bad specs refused before anything runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from add_turbo.headless.batch import pixel_hash
from add_turbo.headless.batch_worker import thread_env
from devkit import host
from tests.support.batch import (
    REPO,
    cli,
    cli_env,
    comfy_args,
    interrupt_after,
    lone_pixel_hashes,
    manifest,
    write_prompt,
)

SEEDS = range(3, 7)


@pytest.fixture(scope="module")
def one_thread_server(tiny_models):
    """A server with one torch thread, as each batch worker here runs: the same thread count gives the
    same bits (a GEMM's rounding may depend on how its rows are split between threads)."""
    srv = host.start_server(env=thread_env(1))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def workflow(tiny_models, tmp_path_factory):
    return write_prompt(tmp_path_factory.mktemp("batch") / "prompt.json", tiny_models["sd_turbo"].single_file.name)


def test_a_sweep_renders_each_item_once_equal_to_its_lone_run(one_thread_server, workflow, tmp_path):
    out = tmp_path / "out"
    result = cli("batch", workflow, "--server", one_thread_server.url, "--out", out,
                 "--sweep", f"ADDTurboSample.seed={SEEDS.start}:{SEEDS.stop}", "--set", "3.width=64")
    assert result.returncode == 0, result.stderr
    assert "4 done, 0 skipped" in result.stderr and "img/s" in result.stderr  # summary and progress bar
    header, lines = manifest(out)
    assert header["items"] == 4 and len(header["job"]) == 16
    assert [line["index"] for line in lines] == [0, 1, 2, 3]
    assert all(line["status"] == "done" and line["error"] is None for line in lines)
    assert [line["files"] for line in lines] == [[f"00000{i}_seed-{seed}.png"] for i, seed in enumerate(SEEDS)]
    lone = lone_pixel_hashes(workflow, one_thread_server.url, SEEDS, tmp_path)
    for line, seed in zip(lines, SEEDS, strict=True):
        assert line["overrides"] == {"ADDTurboSample.seed": seed}
        assert pixel_hash((out / line["files"][0]).read_bytes()) == line["pixels_sha256"][0] == lone[seed]
    assert len(set(lone.values())) == len(SEEDS)  # the seeds do make different images
    # The same command again renders nothing; the PNG holds the item's own prompt.
    again = cli("batch", workflow, "--server", one_thread_server.url, "--out", out,
                "--sweep", f"ADDTurboSample.seed={SEEDS.start}:{SEEDS.stop}", "--set", "3.width=64")
    assert again.returncode == 0 and "0 done, 4 skipped" in again.stderr, again.stderr
    assert json.loads(Image.open(out / lines[2]["files"][0]).info["prompt"])["4"]["inputs"]["seed"] == SEEDS[2]


def test_a_ui_workflow_and_a_prompt_list_name_the_files_and_carry_the_workflow(one_thread_server, tiny_models, tmp_path):
    path = REPO / "workflows" / "SD-Turbo - text to image.json"
    loader = next(n for n in json.loads(path.read_text())["nodes"] if n["type"] == "ADDTurboLoader")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox in the snow\n\n  a lighthouse at dusk  \n")
    out = tmp_path / "out"
    result = cli("batch", path, "--server", one_thread_server.url, "--out", out, "--prompts", prompts,
                 "--sweep", "ADDTurboSample.seed=1,2", "--set", f"{loader['id']}.ckpt_name={tiny_models['sd_turbo'].single_file.name}",
                 "--set", "EmptyLatentImage.width=64", "--set", "EmptyLatentImage.height=64")
    assert result.returncode == 0, result.stderr
    _, lines = manifest(out)
    assert [line["files"][0] for line in lines] == [
        "000000_seed-1_text-a-red-fox-in-the-snow.png", "000001_seed-1_text-a-lighthouse-at-dusk.png",
        "000002_seed-2_text-a-red-fox-in-the-snow.png", "000003_seed-2_text-a-lighthouse-at-dusk.png"]
    image = Image.open(out / lines[3]["files"][0])
    workflow = json.loads(image.info["workflow"])  # the editor's graph, its widgets holding the item's values
    values = {n["type"]: n["widgets_values"] for n in workflow["nodes"]}
    assert values["CLIPTextEncode"][0] == "a lighthouse at dusk" and values["ADDTurboSample"][0] == 2


def test_bad_specs_and_another_job_are_refused_before_anything_runs(workflow, tmp_path):
    out = tmp_path / "out"
    for args, message in [
        (["--sweep", "seed=1:5"], "write NODE.INPUT=A:B"),
        (["--sweep", "ADDTurboSample.seed=5:5"], "the range 5:5 is empty"),
        (["--sweep", "ADDTurboSample.seed="], "write NODE.INPUT=A:B"),
        (["--prompts", tmp_path / "absent.txt"], "cannot read it"),
        ([], "nothing to sweep"),
        (["--sweep", "4.seed=1,2", "--min-workers", "2"], "need --ray"),
        (["--sweep", "4.seed=1,2", "--ray", "--workers", "1", "--min-workers", "2"], "more than --workers 1"),
    ]:
        result = cli("batch", workflow, "--server", "http://127.0.0.1:9", "--out", out, *args, timeout=60)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert not (out / "manifest.jsonl").exists()  # refused before the folder was claimed
    # A folder that holds another job's manifest: refused, the manifest left as it is.
    out.mkdir()
    (out / "manifest.jsonl").write_text('{"job": "0123456789abcdef"}\n')
    result = cli("batch", workflow, "--server", "http://127.0.0.1:9", "--out", out, "--sweep", "4.seed=1,2", timeout=60)
    assert result.returncode == 2 and "belongs to another job" in result.stderr, result.stderr
    assert (out / "manifest.jsonl").read_text() == '{"job": "0123456789abcdef"}\n'


def test_a_bad_input_name_is_refused_before_any_item_is_queued(one_thread_server, workflow, tmp_path):
    result = cli("batch", workflow, "--server", one_thread_server.url, "--out", tmp_path / "out",
                 "--sweep", "ADDTurboSample.sed=1:3")
    assert result.returncode == 2 and "has no input 'sed' (did you mean 'seed'?)" in result.stderr, result.stderr
    _, lines = manifest(tmp_path / "out")
    assert lines == []


def test_a_refused_item_is_recorded_failed_and_the_others_go_on(one_thread_server, workflow, tmp_path):
    out = tmp_path / "out"
    result = cli("batch", workflow, "--server", one_thread_server.url, "--out", out, "--sweep", "ADDTurboSample.steps=1,0,2")
    assert result.returncode == 1, result.stderr
    assert "2 done, 0 skipped" in result.stderr and "1 failed" in result.stderr
    _, lines = manifest(out)
    failed = [line for line in lines if line["status"] == "failed"]
    assert [line["index"] for line in failed] == [1] and "steps" in failed[0]["error"] and failed[0]["files"] == []
    # not retried: the rerun renders nothing and still reports the failure
    again = cli("batch", workflow, "--server", one_thread_server.url, "--out", out, "--sweep", "ADDTurboSample.steps=1,0,2")
    assert again.returncode == 1 and "0 done, 3 skipped" in again.stderr and "1 failed" in again.stderr, again.stderr


def test_ctrl_c_leaves_a_consistent_manifest_and_the_rerun_renders_the_rest(tiny_models, workflow, tmp_path):
    """SIGINT once 3 images have landed; the sweep is long enough (a few seconds at the fastest) that the
    signal always comes before its end."""
    out, count = tmp_path / "out", 60
    command = [sys.executable, "-m", "add_turbo", "batch", str(workflow), "--out", str(out), "--sweep",
               f"ADDTurboSample.seed=0:{count}", "--cpus-per-worker", "1", "--comfyui", str(host.COMFY_DIR),
               "--comfyui-args", comfy_args()]
    code, stderr = interrupt_after(command, out)
    assert code == 130, stderr
    k = _items(out)
    assert 3 <= k < count and "not rendered (interrupted: run the same command again" in stderr, stderr
    assert {p.name for p in out.glob("*.png")} >= {line["files"][0] for line in manifest(out)[1]}
    rerun = subprocess.run(command, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{count - k} done, {k} skipped" in rerun.stderr, rerun.stderr
    _, lines = manifest(out)
    assert sorted(line["index"] for line in lines) == list(range(count))
    assert not list(out.glob(".*partial"))


def _items(out: Path) -> int:
    path = out / "manifest.jsonl"
    return max(0, len(path.read_text().splitlines()) - 1) if path.exists() else 0


def test_ray_asked_for_without_ray_installed_says_how_to_install_it(workflow, tmp_path):
    blocker = tmp_path / "no_ray"
    blocker.mkdir()
    (blocker / "ray.py").write_text("raise ImportError('No module named ray (blocked for this test)')\n")
    env = cli_env(PYTHONPATH=os.pathsep.join([str(blocker), cli_env()["PYTHONPATH"]]))
    result = cli("batch", workflow, "--out", tmp_path / "out", "--sweep", "4.seed=1,2", "--ray", env=env, timeout=60)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        'error: --ray needs Ray, which this Python does not have: pip install "add-turbo[ray]" '
        '(or pip install "ray>=2.60"), on every node of the cluster']
