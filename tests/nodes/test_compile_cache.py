"""The loader's compiled graphs kept on disk: a new start loads them, keyed by checkpoint and options.

The start-to-start tests run each start as a fresh Python process (an in-process host, as
devkit/host.init_in_process builds it) over one temporary cache folder, and read torch's own
FX graph cache counters to tell what happened: compiled (misses) or loaded (hits only).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from devkit.pack import pack_module

SIZE, PROMPT = 512, "a lighthouse at dusk"  # the warm-up's size and step count: the image reuses its graphs
CACHE_ENV = "ADD_TURBO_COMPILE_CACHE"


def _counts() -> dict:
    from torch._dynamo.utils import counters

    return {"graphs": counters["stats"]["unique_graphs"],
            **{k: counters["inductor"][f"fxgraph_cache_{k}"] for k in ("hit", "miss", "bypass")}}


def _image(model, clip, vae):
    from devkit import graphs as g

    return g.decode(vae, g.turbo_sample(model, g.encode(clip, PROMPT), g.empty_latent(SIZE), seed=5, steps=1))


def _child(plan: dict) -> None:
    """One start of the host: the planned loads in order, each drawn once; saves what torch reported.

    Runs in inference mode, as the host's executor runs nodes.
    """
    from devkit import host

    host.init_in_process()
    from devkit import graphs as g

    results = []
    with torch.inference_mode():
        for step in plan["steps"]:
            if step == "forget":  # drop the graphs compiled in this process: only the disk cache is left
                torch._dynamo.reset()
                continue
            name, compiled, *mode = step
            before, start = _counts(), time.perf_counter()
            with torch.inference_mode(mode != ["autograd"]):  # "autograd": the loader called outside the executor
                output = g.builtin("ADDTurboLoader").execute(ckpt_name=name, compile="inductor" if compiled else "off")
            load_s = time.perf_counter() - start
            loaded = _counts()
            image = _image(*output.result)
            after = _counts()
            results.append({"name": name, "message": (output.ui or {}).get("text", [""])[0], "load_s": load_s,
                            "image": image, "image_graphs": after["graphs"] - loaded["graphs"],
                            **{k: after[k] - before[k] for k in after}})
    torch.save(results, plan["out"])


def _start(cache: Path, out: Path, steps: list) -> list[dict]:
    """A new Python process (a new start of the host) over `cache`; what each step reported."""
    from devkit import host

    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    env[CACHE_ENV] = str(cache)
    plan = {"steps": steps, "out": str(out)}
    run = subprocess.run([str(host.PYTHON), "-m", "tests.nodes.test_compile_cache", json.dumps(plan)], cwd=host.REPO,
                         env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    return torch.load(out)


def _other_weights(src: Path, dst: Path) -> None:
    """The same architecture with other UNet weights (a fine-tune, as far as torch's cache key can see)."""
    from safetensors.torch import load_file, save_file

    sd = load_file(src)
    for key in ("model.diffusion_model.out.2.bias", "model.diffusion_model.input_blocks.0.0.weight"):
        generator = torch.Generator().manual_seed(7)
        sd[key] = sd[key] + 0.2 * torch.randn(sd[key].shape, generator=generator)
    save_file(sd, dst)


@pytest.fixture(scope="module")
def starts(tiny_models, tmp_path_factory):
    """Start 1 compiles checkpoint A. Start 2 loads A (the loader called with autograd on); then, with
    only the disk cache left, B (A's architecture, other weights); then A again; and both uncompiled
    for reference."""
    from devkit import host

    a = tiny_models["sd_turbo"].single_file.name
    b = f"tiny_sd_turbo_compile_cache_other_{os.getpid()}.safetensors"  # one per test run: runs may overlap
    folder = tmp_path_factory.mktemp("compile_cache")
    placed = host.BASE_DIR / "models" / "checkpoints" / b
    _other_weights(tiny_models["sd_turbo"].single_file, placed)
    try:
        (first,) = _start(folder / "cache", folder / "first.pt", [(a, True)])
        second = _start(folder / "cache", folder / "second.pt",
                        [(a, True, "autograd"), "forget", (b, True), (a, True), (a, False), (b, False)])
    finally:
        placed.unlink(missing_ok=True)
    runs = dict(zip(["first A", "second A", "B", "A after B", "A eager", "B eager"], [first, *second]))
    for label, run in runs.items():
        print(f"\nFAST compile cache, {label}: {run['message'] or 'uncompiled'}; loader {run['load_s']:.1f} s; "
              f"FX graph cache hit {run['hit']} miss {run['miss']} bypass {run['bypass']}")
    return runs


def test_first_start_compiles_and_the_next_start_loads_the_compiled_graphs(starts):
    from tests.support.tolerances import assert_fp32_close

    first, second = starts["first A"], starts["second A"]
    assert first["message"].startswith("compiled (inductor), 512x512 warm-up")
    assert first["miss"] >= 2 and first["hit"] == 0 and first["bypass"] == 0  # UNet and text encoder, saved
    assert second["message"].startswith("loaded compiled graphs (inductor), 512x512 warm-up")
    assert second["miss"] == 0 and second["bypass"] == 0 and second["hit"] >= 2  # nothing compiled again
    # Loaded with autograd on, the warm-up still compiles in inference mode, as the executor samples:
    # the image traces no other graph.
    assert first["image_graphs"] == 0 and second["image_graphs"] == 0
    assert second["load_s"] < 0.5 * first["load_s"]  # measured 55-74 s -> 12-19 s on 2 shared cores
    assert_fp32_close(second["image"], first["image"])


def test_another_checkpoint_never_loads_the_cached_graphs_and_each_draws_its_own_image(starts):
    from tests.support.tolerances import assert_fp32_close

    b, a_again = starts["B"], starts["A after B"]
    assert b["message"].startswith("compiled (inductor)") and b["miss"] >= 2 and b["hit"] == 0  # A's not loaded
    # Nothing traced for A after B: the graphs this process compiled take the weights as inputs.
    assert a_again["message"].startswith("reused compiled graphs") and a_again["graphs"] == 0
    assert (starts["B eager"]["image"] - starts["A eager"]["image"]).abs().max() > 0.05  # the weights show
    assert_fp32_close(b["image"], starts["B eager"]["image"])  # B's compiled graphs compute with B's weights
    assert_fp32_close(a_again["image"], starts["A eager"]["image"])  # and A's, loaded after B, with A's
    assert_fp32_close(starts["second A"]["image"], starts["A eager"]["image"])


# In-process: the folder and the key.

@pytest.fixture
def cache_module(comfy_host):
    """The pack's nodes/compile_cache module, as the host imported it (from custom_nodes/)."""
    return pack_module("nodes.compile_cache")


OPTIONS = {"weight_dtype": "auto", "attention": "sdpa", "channels_last": True, "compile": "inductor"}


def test_key_follows_the_checkpoint_file_and_the_options(cache_module, tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"x" * 64)
    tag = cache_module.cache_tag(str(path), OPTIONS)
    assert cache_module.cache_tag(str(path), dict(OPTIONS)) == tag
    assert cache_module.cache_tag(str(path), {**OPTIONS, "weight_dtype": "bf16"}) != tag
    link = tmp_path / "link.safetensors"
    link.symlink_to(path)
    assert cache_module.cache_tag(str(link), OPTIONS) == tag  # the file, not the name it is reached by
    os.utime(path, ns=(0, path.stat().st_mtime_ns + 1))
    assert cache_module.cache_tag(str(path), OPTIONS) != tag  # replaced (same size, newer time)


def test_key_of_a_diffusers_folder_follows_every_file_in_it(cache_module, tmp_path):
    (tmp_path / "unet").mkdir()
    weights = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"x" * 64)
    tag = cache_module.cache_tag(str(tmp_path), OPTIONS)
    weights.write_bytes(b"y" * 65)
    assert cache_module.cache_tag(str(tmp_path), OPTIONS) != tag


def test_folder_is_the_override_then_the_users_torch_setting_then_the_user_directory(cache_module, tmp_path,
                                                                                     monkeypatch):
    import folder_paths
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"x")
    monkeypatch.setattr(folder_paths, "user_directory", str(tmp_path / "user"))  # as --user-directory sets it
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # what torch itself writes there
    cache = cache_module.for_checkpoint(str(ckpt), OPTIONS)
    assert cache.folder == str(tmp_path / "user" / "__cache" / "add_turbo_compile") and os.path.isdir(cache.folder)

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "users_own"))
    assert cache_module.for_checkpoint(str(ckpt), OPTIONS).folder is None  # kept as the user set it

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "override"))
    cache = cache_module.for_checkpoint(str(ckpt), OPTIONS)
    assert cache.folder == str(tmp_path / "override") and os.path.isdir(cache.folder)


def test_scope_sets_torchs_folder_and_tag_only_inside(cache_module, tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    cache = cache_module.CompileCache(str(tmp_path), "add-turbo-test")
    seen = cache.wrap(lambda: (os.environ.get("TORCHINDUCTOR_CACHE_DIR"), torch.compiler.config.cache_key_tag))()
    assert seen == (str(tmp_path), "add-turbo-test")
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ and torch.compiler.config.cache_key_tag == ""


def test_unusable_folder_is_named_in_a_warning(cache_module, tmp_path, monkeypatch, caplog):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_bytes(b"")
    monkeypatch.setenv(CACHE_ENV, str(not_a_folder / "cache"))
    with caplog.at_level(logging.WARNING):
        assert cache_module.for_checkpoint(str(not_a_folder), OPTIONS) is None
    assert f"compile cache {not_a_folder / 'cache'} cannot be used" in caplog.text and CACHE_ENV in caplog.text


if __name__ == "__main__":  # one start: python -m tests.nodes.test_compile_cache PLAN, from the repository root
    _child(json.loads(sys.argv[1]))
