"""ADD Turbo Sample's queue_batch: queued prompts that differ only in its seed and the text of the
CLIPTextEncode feeding it (add_turbo.prompt_twins), sampled in one UNet call.

The first of them to run encodes the others' texts with the same CLIP (as their CLIPTextEncode will:
the CLIP's prompt cache then answers them), samples them all through the engine
(latent_sampling.sample_latents_together) and keeps the others' latents (prompt_twins.LatentStash);
each of those prompts, when it runs, takes its latent instead of sampling, provided its inputs hold
the same values.
"""

import logging

from ..add_turbo import prompt_twins
from ..add_turbo.log_once import log_once
from . import host_api
from .latent_sampling import sample_latent, sample_latents_together

log = logging.getLogger(__name__)

STASH = prompt_twins.LatentStash()
TEXT_NODE_CLASS = "CLIPTextEncode"  # the host's node; host_api.encode_text encodes as it does


def _text_node(prompt: dict, node_id: str) -> str | None:
    """The id of the host's CLIPTextEncode that feeds this node's positive input, if one does."""
    link = prompt.get(node_id, {}).get("inputs", {}).get("positive")
    if isinstance(link, list) and len(link) == 2 and prompt.get(str(link[0]), {}).get("class_type") == TEXT_NODE_CLASS:
        return str(link[0])
    return None


def sample_with_queued_twins(model, positive, latent, seed, steps, strength, spacing, sampler, eta, limit: int,
                             prompt, node_id, denoise_mask=None) -> tuple:
    """sample_latent's latent [B, C, h, w], and what queue batching did for the node: None when nothing
    was batched, {"prompts_together": N, "seeds": [...]} on the run that sampled N prompts in one UNet
    call, {"sampled_ahead": True} on a run that took the latent an earlier one sampled for it.

    Args:
        limit: the most prompts in one UNet call, this one included (1: no batching).
        prompt: the running API-format prompt; node_id: this node's id in it (None in-process).
    """
    if limit <= 1 or not prompt or node_id is None or denoise_mask is not None:
        return sample_latent(model, positive, latent, seed, steps, strength, spacing, sampler, eta,
                             denoise_mask=denoise_mask), None
    schedule = (steps, strength, spacing, sampler, eta)
    STASH.keep_only(host_api.live_prompt_ids())
    taken = STASH.take(node_id, seed, (model, positive, latent, *schedule))
    if taken is not None:
        return taken, {"sampled_ahead": True}
    clip = host_api.clip_that_encoded(positive[0][0]) if positive else None
    text_node = _text_node(prompt, node_id) if clip is not None else None
    twins = [twin for twin in prompt_twins.queued_twins(prompt, node_id, host_api.queued_prompts(), limit - 1,
                                                        text_node)
             if not STASH.holds(twin.prompt_id, node_id)]
    if twins:
        own_text = prompt[text_node]["inputs"]["text"] if text_node is not None else None
        positives = [positive] + [positive if twin.text in (None, own_text) else host_api.encode_text(clip, twin.text)
                                  for twin in twins]
        seeds = [seed, *(twin.seed for twin in twins)]
        latents, reason = sample_latents_together(model, positives, latent, seeds, *schedule)
        if reason is None:
            for twin, twin_positive, twin_latent in zip(twins, positives[1:], latents[1:], strict=True):
                STASH.put(twin.prompt_id, node_id, twin.seed, (model, twin_positive, latent, *schedule), twin_latent)
            together = {"prompts_together": len(seeds), "seeds": seeds}
            log.info("ADD Turbo: %s", describe(together))
            return latents[0], together
        log_once(log, f"ADD Turbo: queue_batch: {reason}: each queued prompt samples on its own", level=logging.WARNING)
    return sample_latent(model, positive, latent, seed, steps, strength, spacing, sampler, eta), None


def describe(batching: dict) -> str:
    """What sample_with_queued_twins did, in words (the node's text output and the log)."""
    if batching.get("sampled_ahead"):
        return "sampled ahead, in one UNet call with an earlier queued prompt"
    seeds = batching["seeds"]
    return (f"sampled with {len(seeds) - 1} queued prompt(s) in one UNet call "
            f"(seeds {', '.join(map(str, seeds))})")
