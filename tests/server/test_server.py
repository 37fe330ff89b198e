"""Whole graphs through a real ComfyUI server started by the test (HTTP + websocket)."""

import io

import pytest
from PIL import Image

from devkit import host
from devkit.graphs import txt2img_prompt

PACK_NODES = ("ADDTurboLoader", "ADDTurboScheduler", "ADDTurboSampler", "ADDTurboSample")


def test_pack_imports_without_failure(server):
    log = server.log()
    assert "add-turbo" in log
    assert "IMPORT FAILED" not in "".join(line for line in log.splitlines() if "add-turbo" in line)


def test_object_info_documents_every_input(client):
    info = client.object_info()
    for node_id in PACK_NODES:
        node = info[node_id]
        assert node["description"], node_id
        assert node["display_name"].startswith("ADD Turbo")
        for section in ("required", "optional"):
            for name, spec in node["input"].get(section, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"


def test_every_node_has_the_search_aliases_where_the_host_takes_them(client):
    """Newer hosts' io.Schema takes search_aliases (the editor's node search matches them); 0.3.75's does not,
    and there the nodes go without rather than fail to load."""
    takes = "search_aliases" in (host.COMFY_DIR / "comfy_api" / "latest" / "_io.py").read_text()
    info = client.object_info()
    expected = ["sd turbo", "sdxl turbo", "adversarial diffusion", "1 step", "few step", "img2img", "refine"]
    for node_id in (*PACK_NODES, "ADDTurboRefine"):
        assert info[node_id].get("search_aliases") == (expected if takes else None), node_id


@pytest.mark.parametrize("family", ["sd_turbo", "sdxl_turbo"])
def test_txt2img_graph_runs_and_saves_png(client, tiny_models, family):
    prompt = txt2img_prompt(tiny_models[family].single_file.name, seed=5, steps=2, size=64, prefix=f"test_{family}")
    run = client.run(prompt)
    assert run.error is None, run.error
    progress = run.of_type("progress")
    assert progress and progress[-1]["value"] == progress[-1]["max"] == 2
    executed = {d["node"] for d in run.of_type("executed")}
    assert "6" in executed
    (png,) = client.images(run.prompt_id)
    image = Image.open(io.BytesIO(png))
    assert image.size == (64, 64)
    assert len(set(image.getdata())) > 50  # not blank
    # Same seed, same image (deterministic through the server, with the loader cache warm).
    again = client.run(txt2img_prompt(tiny_models[family].single_file.name, seed=5, steps=2, size=64,
                                      prefix=f"test_{family}"))
    assert client.images(again.prompt_id)[0] == png


@pytest.mark.parametrize("name,content,expect", [
    ("corrupt_turbo.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all", "not a valid safetensors file"),
    ("empty_turbo.safetensors", b"", "too short"),
])
def test_bad_checkpoint_gives_execution_error_and_server_keeps_serving(client, tmp_checkpoint, tiny_models, name,
                                                                       content, expect):
    tmp_checkpoint(content, name)
    run = client.run(txt2img_prompt(name, size=64))
    assert run.error is not None
    message = run.error["exception_message"]
    print(f"\nexecution_error for {name}: {message}")
    assert name in message and expect in message and "download it again" in message
    good = client.run(txt2img_prompt(tiny_models["sd_turbo"].single_file.name, size=64))
    assert good.error is None and client.images(good.prompt_id)


def test_wrong_family_checkpoint_is_refused_with_fix(client, tmp_checkpoint, tiny_models, tmp_path):
    from safetensors.torch import load_file, save_file

    sd = load_file(str(tiny_models["sd_turbo"].single_file))
    sd1 = {k: v for k, v in sd.items() if not k.startswith("cond_stage_model.")}
    sd1["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"] = sd[
        "cond_stage_model.model.token_embedding.weight"]
    save_file(sd1, str(tmp_path / "sd15.safetensors"))
    name = tmp_checkpoint(tmp_path / "sd15.safetensors", "looks_like_sd15.safetensors")
    run = client.run(txt2img_prompt(name, size=64))
    message = run.error["exception_message"]
    assert "SD 1.x" in message and "Load Checkpoint" in message and name in message
    good = client.run(txt2img_prompt(tiny_models["sdxl_turbo"].single_file.name, size=64))
    assert good.error is None


def test_quick_test_for_ci_start_has_no_import_failure_for_the_pack(tiny_models):
    import subprocess

    result = subprocess.run(
        [str(host.PYTHON), "main.py", "--quick-test-for-ci", *host.base_args()],
        cwd=host.COMFY_DIR, capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "PYTHONPATH": str(host.STUBS_DIR)})
    log = result.stdout + result.stderr
    pack_lines = [line for line in log.splitlines() if "custom_nodes/add-turbo" in line]
    assert pack_lines, log[-2000:]
    assert not any("IMPORT FAILED" in line for line in pack_lines), pack_lines
