"""Several queued prompts of one graph in one UNet call.

Queueing a graph N times with a randomised seed (the editor's batch count) gives N prompts that
differ only in the sampler's seed; a script queueing one graph with other prompt texts gives prompts
that differ in the text of the node feeding the sampler. The first to reach its sampler can sample
all of them as one batch; the others then find their latents here when their turn comes. Plain Python over API-format
prompts ({node id: {"class_type", "inputs"}}); the host's queue is read in nodes/host_api/prompt_queue.py.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import NamedTuple

import torch

SEED_INPUT = "seed"
TEXT_INPUT = "text"
STASH_SIZE = 64  # latents kept for queued prompts; a few KiB to a few MiB each


class Twin(NamedTuple):
    prompt_id: str
    seed: int
    text: str | None  # the prompt text of text_node, when one was given


def _without(prompt: dict, inputs: set) -> dict:
    """What `prompt` computes, without the (node id, input name) pairs in `inputs`: each node's class and
    inputs. Other keys are bookkeeping: the editor's titles (_meta), and what the host's executor writes
    into the running prompt (is_changed, the fingerprint of nodes that have one)."""
    return {node_id: (node.get("class_type"), {k: v for k, v in node.get("inputs", {}).items()
                                               if (node_id, k) not in inputs})
            if isinstance(node, dict) else node for node_id, node in prompt.items()}


def _literal(prompt: dict, node_id: str | None, name: str, kind: type):
    value = prompt.get(node_id, {}).get("inputs", {}).get(name) if isinstance(prompt, dict) else None
    return value if isinstance(value, kind) else None


def queued_twins(prompt: dict, node_id: str, pending: list[tuple[str, dict]], limit: int,
                 text_node: str | None = None) -> list[Twin]:
    """The first `limit` prompts of `pending` that equal `prompt` except in node `node_id`'s seed and,
    if given, node `text_node`'s text (the CLIPTextEncode that feeds the sampler).

    Args:
        prompt: the running prompt; node_id: the sampler's id in it; pending: (prompt id, prompt)
        waiting in the queue, in the order they will run.
    Returns:
        Twin(prompt id, seed, text) of each, in queue order. A seed or text given by a link makes no
        twin, nor a (seed, text) already taken by `prompt` or an earlier twin: that image is the same.
    """
    seed = _literal(prompt, node_id, SEED_INPUT, int)
    text = _literal(prompt, text_node, TEXT_INPUT, str) if text_node is not None else None
    if limit < 1 or seed is None or (text_node is not None and text is None):
        return []
    varying = {(node_id, SEED_INPUT)} | ({(text_node, TEXT_INPUT)} if text_node is not None else set())
    reference = _without(prompt, varying)
    taken, twins = {(seed, text)}, []
    for prompt_id, other in pending:
        other_seed = _literal(other, node_id, SEED_INPUT, int)
        other_text = _literal(other, text_node, TEXT_INPUT, str) if text_node is not None else None
        if other_seed is None or (text_node is not None and other_text is None) or (other_seed, other_text) in taken:
            continue
        if other.keys() == prompt.keys() and _without(other, varying) == reference:
            taken.add((other_seed, other_text))
            twins.append(Twin(prompt_id, other_seed, other_text))
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

    def holds(self, prompt_id: str, node_id: str) -> bool:
        """A latent for this prompt's node is waiting here."""
        return (prompt_id, node_id) in self.entries

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
