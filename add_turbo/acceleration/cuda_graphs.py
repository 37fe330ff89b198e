"""CUDA graphs over static buffers: record a function once per input shape, replay it after that.

A graph replays its kernels on the tensors it was recorded with, by address: the inputs are copied
into static buffers before each replay, the outputs copied out after it, and a move of the weights it
reads voids it. GraphCache keeps the graphs of one function or step loop (most recently used last, a
few at most: each holds its own GPU memory pool); GraphedCall wraps a module's function in one.
Recording and replaying happen only on a CUDA GPU; the CPU tests replace `record` with an eager
stand-in, which checks the buffers and the caches, not the CUDA calls.
"""

from __future__ import annotations

import collections
import logging
import time

import torch

from .call_key import call_key

log = logging.getLogger(__name__)

GRAPHS_KEPT = 4  # graphs kept per cache


def record(body, device: torch.device):
    """body() recorded as a CUDA graph -> (graph, body's output: a static buffer each replay rewrites).

    body must do device work only (no host syncs, no host-to-device copies). One warm-up run on a
    side stream comes first: lazy initialisation (cuBLAS / cuDNN handles, algorithm search) must not
    happen during capture. Capture errors are thread-local: the server's threads may query the GPU
    (free memory for the UI) meanwhile.
    """
    with torch.cuda.device(device):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            body()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            out = body()
    return graph, out


class GraphCache:
    """Recorded graphs by key, at most `limit`, the least recently used dropped first; all of them
    dropped when the weights they read move; none recorded again once a recording has failed.

    runs counts "recorded" and "replayed" (and, by the caller, "direct"); pass a Counter to share.
    """

    def __init__(self, name: str, limit: int = GRAPHS_KEPT, runs: collections.Counter | None = None):
        self.name, self.limit = name, limit
        self.graphs: collections.OrderedDict = collections.OrderedDict()
        self.weights = None  # the weights' fingerprint the graphs were recorded with
        self.failure: str | None = None
        self.runs = collections.Counter() if runs is None else runs

    def __len__(self) -> int:
        return len(self.graphs)

    def follow_weights(self, fingerprint: tuple) -> None:
        """Drop every graph if the weights moved since they were recorded (WeightIndex.fingerprint)."""
        if fingerprint != self.weights:
            self.graphs.clear()
            self.weights = fingerprint

    def fail(self, error: BaseException) -> None:
        """Give up on graphs here for good (a recording or replay raised `error`): callers run directly."""
        self.graphs.clear()
        self.failure = f"recording a CUDA graph failed: {str(error)[:200]}"
        log.warning("ADD Turbo engine: %s: %s; running it directly from now on", self.name, self.failure)

    def entry(self, key, make, what: str = ""):
        """The entry for `key`, recorded now by make() if missing (logged with `what`); None once a
        recording has failed (self.failure says why, logged when it happens)."""
        if self.failure is not None:
            return None
        found = self.graphs.get(key)
        if found is None:
            began = time.perf_counter()
            try:
                found = make()
            except RuntimeError as error:  # something in this host's module cannot be recorded
                self.fail(error)
                return None
            self.graphs[key] = found
            while len(self.graphs) > self.limit:
                self.graphs.popitem(last=False)
            self.runs["recorded"] += 1
            log.info("ADD Turbo engine: recorded %s%s as a CUDA graph in %.2f s", self.name, what and f" {what}",
                     time.perf_counter() - began)
        self.graphs.move_to_end(key)
        self.runs["replayed"] += 1
        return found


class WeightIndex:
    """Where a module's weights live, without walking the module tree on every call (about 2 ms for
    the SD UNet's 843 modules, against 0.2 ms here): its submodules' parameter and buffer dicts, listed
    once. Weights are moved and patched by replacing entries of these dicts or their data, which the
    index sees (a submodule swapped in is not: callers refuse those). A recorded graph reads the
    weights by address, so a new fingerprint voids it."""

    def __init__(self, module: torch.nn.Module):
        self.dicts = [d for m in module.modules() for d in (m._parameters, m._buffers)]

    def tensors(self) -> list:
        return [t for d in self.dicts for t in d.values() if t is not None]

    def fingerprint(self) -> tuple:
        return tuple(t.data_ptr() for d in self.dicts for t in d.values() if t is not None)


class GraphedCall:
    """fn(*tensors, **options) replayed from a CUDA graph recorded once per input (shapes, dtypes,
    options) over static input buffers; each call returns copies of the graph's outputs. Tensor
    keyword arguments are inputs too; other keyword arguments (ints, None, strings) are part of the key.

    fn runs directly instead outside inference mode, when an argument is neither a tensor nor hashable,
    when `module`'s weights are not all on the inputs' device, and for good once a recording has
    failed. Graphs are dropped when the weights move.
    """

    def __init__(self, fn, module: torch.nn.Module, name: str):
        self.fn, self.module = fn, module
        self.cache = GraphCache(name)
        self.index = WeightIndex(module)

    name = property(lambda self: self.cache.name)
    runs = property(lambda self: self.cache.runs)  # "recorded", "replayed", "direct"
    failure = property(lambda self: self.cache.failure)
    graphs = property(lambda self: self.cache.graphs)

    def __call__(self, *args, **kwargs):
        key, inputs = call_key(args, kwargs)
        # Graph buffers are inference tensors, as the host's executor makes every tensor: a call from
        # outside inference mode (another extension, a script) runs directly.
        usable = key is not None and self.cache.failure is None and torch.is_inference_mode_enabled()
        weights = self.index.fingerprint() if usable else None
        if weights is not None and weights != self.cache.weights:  # moved: check the device once per move
            if all(t.device == inputs[0].device for t in self.index.tensors()):
                self.cache.follow_weights(weights)
        entry = None
        if weights is not None and weights == self.cache.weights:
            shapes = ", ".join("x".join(map(str, shape)) for shape, _, _ in key[0])
            entry = self.cache.entry(key, lambda: self._record(key, inputs), f"for {shapes}")
        if entry is None:
            self.cache.runs["direct"] += 1
            return self.fn(*args, **kwargs)
        static, graph, out = entry
        for buffer, value in zip(static, inputs, strict=True):
            buffer.copy_(value)
        graph.replay()
        return copied(out)

    def _record(self, key, inputs):
        _, positional, names, options = key
        static = [t.clone() for t in inputs]

        def body():
            return self.fn(*static[:positional], **dict(zip(names, static[positional:], strict=True)), **dict(options))

        return (static, *record(body, inputs[0].device))


def copied(out):
    """Copies of the tensors in `out` (a tensor, or tuples and lists of tensors and None): the next
    replay overwrites the graph's own."""
    if torch.is_tensor(out):
        return out.clone()
    if isinstance(out, (tuple, list)):
        return type(out)(copied(item) for item in out)
    return out
