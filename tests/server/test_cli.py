"""The headless CLI (python -m add_turbo run) against a real server, and with an embedded one."""

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from devkit import host
from devkit.client import ComfyClient

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))


def cli(*args, timeout=300):
    # The embedded server of the development host needs its torchvision stand-in on the path.
    env = {**os.environ, "PYTHONPATH": str(host.STUBS_DIR)}
    return subprocess.run([sys.executable, "-m", "add_turbo", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)


def _tiny_overrides(workflow_path, tiny_models):
    workflow = json.loads(workflow_path.read_text())
    sets = []
    for node in workflow["nodes"]:
        if node["type"] == "ADDTurboLoader":
            family = "sdxl_turbo" if "xl" in node["widgets_values"][0] else "sd_turbo"
            sets += ["--set", f"{node['id']}.ckpt_name={tiny_models[family].single_file.name}"]
    return sets


def _server_state(url):
    """What the server has run and has waiting: to show that a refused command queued nothing."""
    with ComfyClient(url, events=False) as client:
        queue = client.get_json("/queue")
        return sorted(client.history()), [len(queue["queue_running"]), len(queue["queue_pending"])]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_cli_runs_every_example_workflow(server, tiny_models, tmp_path, path):
    result = cli("run", str(path), "--server", server.url, "--out", str(tmp_path),
                 *_tiny_overrides(path, tiny_models), "--set", "ADDTurboLoader.decoder=full")
    assert result.returncode == 0, result.stderr
    written = [Path(line) for line in result.stdout.split()]
    assert written and all(p.exists() and Image.open(p).size[0] >= 512 for p in written)
    assert "done in" in result.stderr


def test_cli_set_overrides_and_api_format(server, tiny_models, tmp_path):
    from devkit.graphs import txt2img_prompt

    api = tmp_path / "api.json"
    api.write_text(json.dumps(txt2img_prompt(tiny_models["sd_turbo"].single_file.name, size=64)))
    # decoder is an optional input the API prompt leaves out: the server's definition makes it settable.
    result = cli("run", str(api), "--server", server.url, "--out", str(tmp_path / "out"), "--set", "3.width=128",
                 "--set", "ADDTurboSample.steps=3", "--set", "ADDTurboLoader.decoder=full")
    assert result.returncode == 0, result.stderr
    (image,) = [Path(line) for line in result.stdout.split()]
    assert Image.open(image).size == (128, 64)
    assert "3/3" in result.stderr  # the progress bar followed all three steps
    assert "prompt" in Image.open(image).info and "workflow" not in Image.open(image).info  # no layout to carry


def _layout(workflow):
    return [(n["id"], n["type"], n["pos"], n["size"], n.get("title"), n["properties"]) for n in workflow["nodes"]]


def test_cli_png_carries_the_workflow_with_the_set_values(server, tiny_models, tmp_path):
    """A UI-format workflow goes with the prompt as extra_pnginfo.workflow, as the editor sends it: the PNG
    reopens as the same graph (layout, titles, links), its widgets holding the --set values."""
    from add_turbo.headless.workflow import ui_to_api

    path = REPO / "workflows" / "SD-Turbo - text to image.json"
    result = cli("run", str(path), "--server", server.url, "--out", str(tmp_path), *_tiny_overrides(path, tiny_models),
                 "--set", "4.seed=7", "--set", "CLIPTextEncode.text=a red fox", "--set", "3.width=64",
                 "--set", "3.height=64")
    assert result.returncode == 0, result.stderr
    (image,) = [Path(line) for line in result.stdout.split()]
    chunks = Image.open(image).info
    prompt, workflow = json.loads(chunks["prompt"]), json.loads(chunks["workflow"])
    nodes = {node["id"]: node for node in workflow["nodes"]}
    assert nodes[4]["widgets_values"][:2] == [7, "fixed"] and nodes[2]["widgets_values"] == ["a red fox"]
    assert nodes[3]["widgets_values"] == [64, 64, 1]
    assert nodes[1]["widgets_values"][0] == tiny_models["sd_turbo"].single_file.name
    original = json.loads(path.read_text())
    assert _layout(workflow) == _layout(original) and workflow["links"] == original["links"]
    assert workflow["extra"] == original["extra"]
    with ComfyClient(server.url, events=False) as client:
        # the widgets hold what ran (the host adds its fingerprints of nodes that have one: is_changed)
        ran = {node_id: {k: v for k, v in node.items() if k != "is_changed"} for node_id, node in prompt.items()}
        assert ui_to_api(workflow, client.object_info()) == ran


@pytest.mark.parametrize("mutate,expect", [
    (lambda w: next(n for n in w["nodes"] if n["type"] == "ADDTurboSample").update(type="NoSuchNode"), "does not define"),
    (lambda w: next(n for n in w["nodes"] if n["type"] == "ADDTurboSample")["widgets_values"].__setitem__(2, 99),
     "steps"),
])
def test_cli_broken_workflow_exits_1_with_the_servers_message(server, tiny_models, tmp_path, mutate, expect):
    path = REPO / "workflows" / "SD-Turbo - text to image.json"
    workflow = json.loads(path.read_text())
    mutate(workflow)
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(workflow))
    result = cli("run", str(broken), "--server", server.url, "--out", str(tmp_path), *_tiny_overrides(path, tiny_models))
    assert result.returncode == 1
    assert expect in result.stderr and "Traceback" not in result.stderr
    print(f"\nCLI error shown: {result.stderr.strip()[:300]}")


def test_cli_bad_set_syntax(server, tmp_path):
    result = cli("run", str(WORKFLOWS[0]), "--server", server.url, "--set", "nonsense")
    assert result.returncode == 2 and "NODE.INPUT=VALUE" in result.stderr


@pytest.mark.parametrize("form,override,expect", [
    # UI format: the names as converted from the node's widgets and links.
    ("ui", "CLIPTextEncode.txt=hello", ["(did you mean 'text'?)", "its inputs: text, clip"]),
    # API format: the prompt names only ckpt_name; the server's definition adds the optional ones.
    ("api", "ADDTurboLoader.decodr=taesd", ["(did you mean 'decoder'?)", "inputs: ckpt_name, weight_dtype, decoder"]),
])
def test_cli_set_of_an_unknown_input_is_refused_before_queueing(server, tiny_models, tmp_path, form, override,
                                                                 expect):
    from devkit.graphs import txt2img_prompt

    workflow = REPO / "workflows" / "SD-Turbo - text to image.json"
    sets = _tiny_overrides(workflow, tiny_models)
    if form == "api":
        workflow, sets = tmp_path / "api.json", []
        workflow.write_text(json.dumps(txt2img_prompt(tiny_models["sd_turbo"].single_file.name, size=64)))
    before = _server_state(server.url)
    result = cli("run", str(workflow), "--server", server.url, "--out", str(tmp_path / "out"), *sets,
                 "--set", override)
    assert result.returncode == 2, result.stderr
    assert f"has no input {override.split('.')[1].split('=')[0]!r}" in result.stderr
    assert all(text in result.stderr for text in expect), result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()
    assert _server_state(server.url) == before


def test_cli_set_of_an_unknown_node_lists_the_nodes(server, tiny_models, tmp_path):
    from devkit.graphs import txt2img_prompt

    prompt = txt2img_prompt(tiny_models["sd_turbo"].single_file.name, size=64)
    prompt["2"]["_meta"] = {"title": "Prompt"}
    api = tmp_path / "api.json"
    api.write_text(json.dumps(prompt))
    before = _server_state(server.url)
    result = cli("run", str(api), "--server", server.url, "--set", "KSampler.seed=1")
    assert result.returncode == 2, result.stderr
    assert "no node matches 'KSampler'" in result.stderr
    assert "2 CLIPTextEncode 'Prompt'" in result.stderr and "4 ADDTurboSample" in result.stderr
    assert "Traceback" not in result.stderr
    assert _server_state(server.url) == before


@pytest.mark.parametrize("watch", [False, True], ids=["run", "watch"])
def test_cli_without_a_server_says_so_in_one_line(tmp_path, watch):
    url = f"http://127.0.0.1:{host.free_port()}"  # just closed: nothing listens there
    result = cli("run", str(WORKFLOWS[0]), "--server", url, "--out", str(tmp_path / "out"),
                 *(["--watch", str(tmp_path / "prompt.txt")] if watch else []), timeout=60)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"error: no ComfyUI server at {url}: start ComfyUI, or leave out --server "
                                          "to start the one this pack is installed in"]
    assert result.stdout == ""


def test_run_example_writes_outside_the_repository(monkeypatch):
    monkeypatch.chdir(REPO)  # the old default was ./output, i.e. inside the repository when run from it
    # Importing the script switches off bytecode caches for itself and its server: undo that afterwards.
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.setattr(sys, "dont_write_bytecode", sys.dont_write_bytecode)
    monkeypatch.setattr(sys, "path", list(sys.path))
    spec = importlib.util.spec_from_file_location("run_example", REPO / "scripts" / "run_example.py")
    run_example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_example)
    out = run_example.parse_args([]).out.resolve()
    assert out == (host.HOME / "output").resolve()
    assert not out.is_relative_to(REPO.resolve())


def test_cli_watch_regenerates_when_the_prompt_file_changes(server, tiny_models, tmp_path):
    from devkit.graphs import txt2img_prompt

    api = tmp_path / "api.json"
    api.write_text(json.dumps(txt2img_prompt(tiny_models["sd_turbo"].single_file.name, size=64)))
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("a red boat")
    process = subprocess.Popen([sys.executable, "-m", "add_turbo", "run", str(api), "--server", server.url, "--out",
                                str(tmp_path / "out"), "--watch", str(prompt_file), "--max-runs", "2"],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not list((tmp_path / "out").glob("*.png")) and time.time() < deadline:
        time.sleep(0.2)
    prompt_file.write_text("a blue boat")
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert "'a red boat'" in out and "'a blue boat'" in out


def test_cli_embedded_server(tiny_models, tmp_path):
    from devkit.graphs import txt2img_prompt

    api = tmp_path / "api.json"
    api.write_text(json.dumps(txt2img_prompt(tiny_models["sd_turbo"].single_file.name, size=64)))
    result = cli("run", str(api), "--out", str(tmp_path / "out"), "--comfyui", str(host.COMFY_DIR),
                 "--comfyui-args", " ".join(host.base_args()))
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "out").glob("*.png"))) == 1
