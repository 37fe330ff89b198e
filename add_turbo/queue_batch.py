"""Several queued prompts of one graph in one UNet call.

Queueing a graph N times with a randomised seed (the editor's batch count) gives N prompts that
differ only in the sampler's seed. The first to reach its sampler can sample all of them as one
batch; the others then find their latents here when their turn comes. Plain Python over API-format
prompts ({node id: {"class_type", "inputs"}}); the host's queue is read in nodes/host_api.py.
"""

from __future__ import annotations

import collections
import copy
from dataclasses import dataclass

import torch

SEED_INPUT = "seed"
STASH_SIZE = 64  # latents kept for queued prompts; a few KiB to a few MiB each


def _without_seed(prompt: dict, node_id: str) -> dict:
    other = copy.copy(prompt)
    node = dict(other[node_id])
    node["inputs"] = {k: v for k, v in node.get("inputs", {}).items() if k != SEED_INPUT}
    other[node_id] = node
    return other


def queued_twins(prompt: dict, node_id: str, pending: list[tuple[str, dict]], limit: int) -> list[tuple[str, int]]:
    """The first `limit` prompts of `pending` that equal `prompt` except in node `node_id`'s seed.

    Args:
        prompt: the running prompt; node_id: the sampler's id in it; pending: (prompt id, prompt)
        waiting in the queue, in the order they will run.
    Returns:
        (prompt id, seed) of each twin, in queue order. A seed given by a link, or one already
        taken (by `prompt` or an earlier twin), makes no twin: that image is the same anyway.
    """
    seed = prompt.get(node_id, {}).get("inputs", {}).get(SEED_INPUT)
    if limit < 1 or not isinstance(seed, int):
        return []
    reference = _without_seed(prompt, node_id)
    seeds, twins = {seed}, []
    for prompt_id, other in pending:
        other_seed = other.get(node_id, {}).get("inputs", {}).get(SEED_INPUT) if isinstance(other, dict) else None
        if not isinstance(other_seed, int) or other_seed in seeds or other.keys() != prompt.keys():
            continue
        if _without_seed(other, node_id) == reference:
            seeds.add(other_seed)
            twins.append((prompt_id, other_seed))
            if len(twins) == limit:
                break
    return twins


def same_values(a, b) -> bool:
    """a and b hold the same values: tensors equal in shape, dtype and every element; other objects
    the same object or ==; lists, tuples and dicts compared item by item."""
    if a is b:
        return True
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same_values(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_values(a[k], b[k]) for k in a)
    try:
        return bool(a == b)
    except (RuntimeError, TypeError, ValueError):  # objects without a meaningful ==
        return False


@dataclass
class _Entry:
    prompt_id: str
    node_id: str
    seed: int
    inputs: tuple  # everything but the seed the latent was sampled from
    latent: torch.Tensor


class LatentStash:
    """Latents sampled ahead for queued prompts, handed out once to the sampler run they belong to."""

    def __init__(self, size: int = STASH_SIZE):
        self.size = size
        self.entries: collections.OrderedDict = collections.OrderedDict()  # (prompt id, node id) -> _Entry

    def __len__(self):
        return len(self.entries)

    def put(self, prompt_id: str, node_id: str, seed: int, inputs: tuple, latent: torch.Tensor) -> None:
        self.entries[(prompt_id, node_id)] = _Entry(prompt_id, node_id, seed, inputs, latent)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)

    def take(self, node_id: str, seed: int, inputs: tuple) -> torch.Tensor | None:
        """The latent sampled for this node, seed and inputs (removed from the stash), or None.

        The inputs are compared by value (same_values), so a prompt whose upstream nodes gave other
        outputs than the batch was sampled with (an edited file, a random node) samples afresh."""
        for key, entry in self.entries.items():
            if entry.node_id == node_id and entry.seed == seed and same_values(entry.inputs, inputs):
                del self.entries[key]
                return entry.latent
        return None

    def keep_only(self, live_prompt_ids: set) -> None:
        """Drop the latents of prompts no longer queued or running (cancelled, or failed before use)."""
        for key in [k for k, e in self.entries.items() if e.prompt_id not in live_prompt_ids]:
            del self.entries[key]

    def pending_ids(self) -> set:
        return {e.prompt_id for e in self.entries.values()}
