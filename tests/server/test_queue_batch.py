"""ADD Turbo Sample's queue_batch through a real server: prompts queued with only another seed, or another
prompt text, share one UNet call, and each image equals its lone run."""

import time

import numpy as np
from PIL import Image

from devkit.graphs import txt2img_prompt

BLOCKER_SIZES = (256, 512, 1024)  # a longer-running prompt first, so the three wait in the queue together


def _graph(ckpt: str, seed: int, queue_batch: int = 4, size: int = 64, text: str = "a photo of a cat") -> dict:
    prompt = txt2img_prompt(ckpt, text=text, seed=seed, steps=2, size=size, prefix="queue_batch")
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


def _lone_and_together(client, name, runs):
    """(images of each (seed, text) run alone, images of the same queued together, their history, ids).
    Together: behind a longer-running prompt, checked in /queue to have waited together."""
    lone = []
    for seed, text in runs:
        run = client.run(_graph(name, seed, queue_batch=1, text=text))
        assert run.error is None, run.error
        assert "4" not in client.history(run.prompt_id)["outputs"]  # nothing batched, no note
        lone.append(_pixels(client.images(run.prompt_id)[0]))
    for size in BLOCKER_SIZES:
        blocker = client.queue(_graph(name, 99, queue_batch=1, size=size))
        ids = [client.queue(_graph(name, seed, text=text)) for seed, text in runs]
        pending = {item[1] for item in client.get_json("/queue")["queue_pending"]}
        history = _wait(client, [blocker, *ids])
        if ids[0] in pending:  # the first had not started when all were queued: they met in the queue
            break
    else:
        raise AssertionError(f"the prompts never waited together behind a blocker of up to {size} px")
    assert all(history[i]["status"]["status_str"] == "success" for i in ids)
    together = [_pixels(client.images(i)[0]) for i in ids]
    return lone, together, history, ids


def _check_batched(client, name, runs, label):
    """The first of `runs` sampled all of them in one UNet call, the others took their latents, and
    each image is its lone run's: a larger batch takes other kernels, so fp32 rounding, at most one
    8-bit level at a rounding edge. Returns the images queued together."""
    lone, together, history, ids = _lone_and_together(client, name, runs)
    seeds = ", ".join(str(seed) for seed, _ in runs)
    assert _note(history, ids[0]) == f"sampled with {len(runs) - 1} queued prompt(s) in one UNet call (seeds {seeds})"
    for i in ids[1:]:
        assert _note(history, i) == "sampled ahead, in one UNet call with an earlier queued prompt"
    levels = [int(abs(a - b).max()) for a, b in zip(together, lone, strict=True)]
    assert max(levels) <= 1, levels
    print(f"\nQUEUE BATCH {label}: {len(runs)} prompts in one UNet call; levels from the lone runs {levels}")
    return together


def test_prompts_queued_with_only_another_seed_share_one_unet_call(server, client, tiny_models):
    runs = [(seed, "a photo of a cat") for seed in (11, 12, 13)]
    together = _check_batched(client, tiny_models["sd_turbo"].single_file.name, runs, "seeds")
    assert abs(together[0] - together[1]).max() > 10  # each prompt got its own seed's image


def test_prompts_queued_with_other_texts_share_one_unet_call(server, client, tiny_models):
    runs = [(21, "a photo of a cat"), (21, "a red fox in the snow"), (22, "a city at night, neon")]
    together = _check_batched(client, tiny_models["sdxl_turbo"].single_file.name, runs, "texts (SDXL)")
    assert abs(together[0] - together[1]).max() > 10  # one seed, another text: another image
