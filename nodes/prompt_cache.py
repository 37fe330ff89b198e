"""An LRU of encoded prompts, keyed exactly: the same tokens, weights and text-encoder state give a hit.

Plain Python and torch; the host's CLIP subclass that uses it lives in host_api/text.py.
"""

import collections

import torch

PROMPT_CACHE_SIZE = 16


def freeze(value):
    """A hashable, exact key for tokenizer output (token ids, weights, embedding tensors)."""
    if isinstance(value, torch.Tensor):
        data = value.detach().cpu().contiguous()
        return ("tensor", tuple(data.shape), str(data.dtype), hash(data.view(torch.uint8).numpy().tobytes()))
    if isinstance(value, dict):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


class PromptCache:
    """The last `size` encodings, least recently used out first. Shared by a CLIP and its clones."""

    def __init__(self, size: int = PROMPT_CACHE_SIZE):
        self.size = size
        self.entries = collections.OrderedDict()
        self.hits = 0

    def __len__(self):
        return len(self.entries)

    def get_or_encode(self, key, encode):
        """The cached output for `key`, or `encode()`'s, remembered. Dicts are handed out as fresh
        copies: callers pop from and add to the dict they get."""
        if key in self.entries:
            self.entries.move_to_end(key)
            self.hits += 1
            out = self.entries[key]
        else:
            out = encode()
            self.entries[key] = out
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)
        return dict(out) if isinstance(out, dict) else out
