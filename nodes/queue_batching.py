"""ADD Turbo Sample's queue_batch: queued prompts that differ only in its seed, sampled in one UNet call.

The first of them to run samples them all through the engine (sampling.sample_latents_together)
and keeps the others' latents (add_turbo.queue_batch.LatentStash); each of those prompts, when it
runs, takes its latent instead of sampling, provided its inputs hold the same values.
"""

import logging

from ..add_turbo import queue_batch
from . import host_api
from .sampling import sample_latent, sample_latents_together

log = logging.getLogger(__name__)

STASH = queue_batch.LatentStash()
_LOGGED = set()


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
    inputs = (model, positive, latent, steps, strength, spacing, sampler, eta)
    STASH.keep_only(host_api.live_prompt_ids())
    taken = STASH.take(node_id, seed, inputs)
    if taken is not None:
        return taken, "sampled ahead, in one UNet call with an earlier queued prompt"
    twins = [(prompt_id, twin_seed) for prompt_id, twin_seed in
             queue_batch.queued_twins(prompt, node_id, host_api.queued_prompts(), limit - 1)
             if (prompt_id, node_id) not in STASH.entries]
    if twins:
        seeds = [seed, *(twin_seed for _, twin_seed in twins)]
        latents, reason = sample_latents_together(model, positive, latent, seeds, steps, strength, spacing,
                                                  sampler, eta)
        if reason is None:
            for (prompt_id, twin_seed), twin_latent in zip(twins, latents[1:], strict=True):
                STASH.put(prompt_id, node_id, twin_seed, inputs, twin_latent)
            note = f"sampled with {len(twins)} queued prompt(s) in one UNet call (seeds {', '.join(map(str, seeds))})"
            log.info("ADD Turbo: %s", note)
            return latents[0], note
        if reason not in _LOGGED:
            _LOGGED.add(reason)
            log.warning("ADD Turbo: queue_batch: %s: each queued prompt samples on its own", reason)
    return sample_latent(model, positive, latent, seed, steps, strength, spacing, sampler, eta), ""
