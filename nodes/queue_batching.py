"""ADD Turbo Sample's queue_batch: queued prompts that differ only in its seed and the text of the
CLIPTextEncode feeding it, sampled in one UNet call.

The first of them to run encodes the others' texts with the same CLIP (as their CLIPTextEncode will:
the CLIP's prompt cache then answers them), samples them all through the engine
(sampling.sample_latents_together) and keeps the others' latents (add_turbo.queue_batch.LatentStash);
each of those prompts, when it runs, takes its latent instead of sampling, provided its inputs hold
the same values.
"""

import logging

from ..add_turbo import queue_batch
from . import host_api
from .sampling import sample_latent, sample_latents_together

log = logging.getLogger(__name__)

STASH = queue_batch.LatentStash()
TEXT_NODE_CLASS = "CLIPTextEncode"  # the host's node; host_api.encode_text encodes as it does
_LOGGED = set()


def _text_node(prompt: dict, node_id: str) -> str | None:
    """The id of the host's CLIPTextEncode that feeds this node's positive input, if one does."""
    link = prompt.get(node_id, {}).get("inputs", {}).get("positive")
    if isinstance(link, list) and len(link) == 2 and prompt.get(str(link[0]), {}).get("class_type") == TEXT_NODE_CLASS:
        return str(link[0])
    return None


def sample(model, positive, latent, seed, steps, strength, spacing, sampler, eta, limit: int, prompt, node_id,
           denoise_mask=None):
    """sample_latent's latent [B, C, h, w], and a note for the node ("" when nothing was batched).

    Args:
        limit: the most prompts in one UNet call, this one included (1: no batching).
        prompt: the running API-format prompt; node_id: this node's id in it (None in-process).
    """
    if limit <= 1 or not prompt or node_id is None or denoise_mask is not None:
        return sample_latent(model, positive, latent, seed, steps, strength, spacing, sampler, eta,
                             denoise_mask=denoise_mask), ""
    schedule = (steps, strength, spacing, sampler, eta)
    STASH.keep_only(host_api.live_prompt_ids())
    taken = STASH.take(node_id, seed, (model, positive, latent, *schedule))
    if taken is not None:
        return taken, "sampled ahead, in one UNet call with an earlier queued prompt"
    clip = host_api.clip_that_encoded(positive[0][0]) if positive else None
    text_node = _text_node(prompt, node_id) if clip is not None else None
    twins = [twin for twin in queue_batch.queued_twins(prompt, node_id, host_api.queued_prompts(), limit - 1,
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
            note = f"sampled with {len(twins)} queued prompt(s) in one UNet call (seeds {', '.join(map(str, seeds))})"
            log.info("ADD Turbo: %s", note)
            return latents[0], note
        if reason not in _LOGGED:
            _LOGGED.add(reason)
            log.warning("ADD Turbo: queue_batch: %s: each queued prompt samples on its own", reason)
    return sample_latent(model, positive, latent, seed, steps, strength, spacing, sampler, eta), ""
