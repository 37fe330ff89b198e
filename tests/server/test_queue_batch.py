"""ADD Turbo Sample's queue_batch through a real server: prompts queued with only another seed share one
UNet call, and each image equals its lone run."""

import time

import numpy as np
from PIL import Image

from devkit.graphs import txt2img_prompt

SEEDS = [11, 12, 13]
BLOCKER_SIZES = (256, 512, 1024)  # a longer-running prompt first, so the three wait in the queue together


def _graph(ckpt: str, seed: int, queue_batch: int = 4, size: int = 64) -> dict:
    prompt = txt2img_prompt(ckpt, seed=seed, steps=2, size=size, prefix="queue_batch")
    prompt["1"]["inputs"]["engine"] = "on"
    prompt["4"]["inputs"]["queue_batch"] = queue_batch
    return prompt


def _wait(client, prompt_ids, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        history = client.history()
        if all(i in history for i in prompt_ids):
            return history
        time.sleep(0.2)
    raise TimeoutError(f"prompts {prompt_ids} did not finish in {timeout} s")


def _pixels(png: bytes):
    import io

    return np.asarray(Image.open(io.BytesIO(png))).astype(int)


def _note(history, prompt_id):
    return history[prompt_id]["outputs"].get("4", {}).get("text", [""])[0]


def test_prompts_queued_with_only_another_seed_share_one_unet_call(server, client, tiny_models):
    name = tiny_models["sd_turbo"].single_file.name
    lone = {}
    for seed in SEEDS:
        run = client.run(_graph(name, seed, queue_batch=1))
        assert run.error is None, run.error
        lone[seed] = _pixels(client.images(run.prompt_id)[0])
    assert "4" not in client.history(run.prompt_id)["outputs"]  # nothing batched, no note

    for size in BLOCKER_SIZES:
        blocker = client.queue(_graph(name, 99, queue_batch=1, size=size))
        ids = [client.queue(_graph(name, seed)) for seed in SEEDS]
        pending = {item[1] for item in client.get_json("/queue")["queue_pending"]}
        history = _wait(client, [blocker, *ids])
        if ids[0] in pending:  # the first had not started when all three were queued: they met in the queue
            break
    else:
        raise AssertionError(f"the prompts never waited together behind a blocker of up to {size} px")

    assert all(history[i]["status"]["status_str"] == "success" for i in ids)
    assert _note(history, ids[0]) == "sampled with 2 queued prompt(s) in one UNet call (seeds 11, 12, 13)"
    for i in ids[1:]:
        assert _note(history, i) == "sampled ahead, in one UNet call with an earlier queued prompt"
    images = {seed: _pixels(client.images(i)[0]) for seed, i in zip(SEEDS, ids, strict=True)}
    # A larger batch takes other kernels: fp32 rounding, at most one 8-bit level at a rounding edge.
    levels = {seed: int(abs(images[seed] - lone[seed]).max()) for seed in SEEDS}
    assert max(levels.values()) <= 1, levels
    assert abs(images[11] - images[12]).max() > 10  # each prompt got its own seed's image
    print(f"\nQUEUE BATCH: 3 prompts in one UNet call behind a {size} px blocker; levels from the lone runs {levels}")
