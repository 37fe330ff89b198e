"""The key a stand-in (a recorded graph, a converted model) is kept under for one call's arguments."""

from __future__ import annotations

import torch


def call_key(args: tuple, kwargs: dict):
    """(key, input tensors) of fn(*args, **kwargs): tensors (positional, and keyword by name) are the inputs,
    keyed by shape, dtype and device; other keyword arguments (ints, None, strings) are part of the key.
    key is None where an argument is neither a tensor nor hashable: such a call runs directly.
    key = (input descriptions, number of positional inputs, tensor keyword names, sorted options)."""
    names = tuple(k for k, v in kwargs.items() if torch.is_tensor(v))
    options = tuple(sorted((k, v) for k, v in kwargs.items() if not torch.is_tensor(v)))
    inputs = [*args, *(kwargs[k] for k in names)]
    if not inputs or not all(torch.is_tensor(t) for t in inputs):
        return None, inputs
    try:
        hash(options)
    except TypeError:
        return None, inputs
    return (tuple((tuple(t.shape), t.dtype, t.device) for t in inputs), len(args), names, options), inputs
