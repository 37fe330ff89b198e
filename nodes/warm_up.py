"""The loader's warm-ups, run once at load so that the first image is not the slow one.

- compile: torch.compile's graphs compiled, or loaded from the on-disk cache, at 512x512 batch 1;
- engine: on a CUDA GPU the 512x512 step graph (and TAESD's and the text encoders') recorded now,
  elsewhere a 64x64 run that checks the direct path;
(the OpenVINO engine's warm-up is in its room, backends/openvino/warm_up.py).
Each returns the loader's message and the warm-up's seconds.
"""

import logging
import time

import torch

from . import compile_cache, compiling, engine
from .backends import cuda_graphs
from .latent_sampling import empty_latent, sample_latent

log = logging.getLogger(__name__)

COMPILE_WARM_UP_SIZE = 512
CUDA_WARM_UP_SIZE = 512  # the engine's size recorded at load: what the models are made for
SMALL_WARM_UP_SIZE = 64  # elsewhere nothing is recorded: a small run checks the path


def compile_warm_up(model, clip, vae, compile_mode: str, cache=None,
                    size: int = COMPILE_WARM_UP_SIZE) -> tuple[str, float]:
    """Compile (and record CUDA graphs) now, at size x size batch 1.

    With an on-disk `cache` (compile_cache.CompileCache) torch loads the graphs a previous start
    compiled instead of compiling them; torch's cache counters tell which happened.
    """
    before = compile_cache.counts()
    start = time.perf_counter()
    latent = empty_latent(model, size)
    runs = 3 if compiling.COMPILE_MODES[compile_mode] == "reduce-overhead" else 1  # warm-up, record, replay
    # In inference mode, as the host's executor runs every node: a graph traced with autograd on is
    # another graph (forward and backward, about 3x the compile time) that the first image would not use.
    with torch.inference_mode():
        positive = clip.encode_from_tokens_scheduled(clip.tokenize(""))
        for _ in range(runs):
            vae.decode(sample_latent(model, positive, latent, 0, 1, 1.0, "trailing", "euler", 0.0))
    seconds = time.perf_counter() - start
    after = compile_cache.counts()
    graphs, hits, misses, bypasses = (after[k] - before[k] for k in ("graphs", "hit", "miss", "bypass"))
    if bypasses:
        log.warning("ADD Turbo: torch did not cache %d of the compiled graphs (TORCH_LOGS=inductor names the "
                    "reason): they compile again at every start", bypasses)
    if not graphs:  # nothing traced: torch ran graphs this process compiled for an earlier load
        done = f"reused compiled graphs ({compile_mode})"
    elif hits and not misses and not bypasses:
        done = f"loaded compiled graphs ({compile_mode})"
    else:
        kept = ", not cached" if bypasses or cache is None or not misses else ""
        done = f"compiled ({compile_mode}){kept}"
    message = f"{done}, {size}x{size} warm-up {seconds:.1f} s"
    log.info("ADD Turbo: %s (graphs traced %d, loaded %d, compiled %d, uncacheable %d; cache %s)", message, graphs,
             hits, misses, bypasses, cache.where() if cache is not None else "off")
    return message, seconds


def engine_warm_up(patcher, clip, vae=None) -> tuple[str, float]:
    """One run at ADD Turbo Sample's defaults (1 step, euler_ancestral), batch 1: on a CUDA GPU it
    records the 512x512 graph now (and the TAESD decode's, where `vae` records one), elsewhere a 64x64
    run checks the path."""
    cuda = patcher.load_device.type == "cuda"
    size = CUDA_WARM_UP_SIZE if cuda else SMALL_WARM_UP_SIZE
    positive = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    began = time.perf_counter()
    samples = sample_latent(patcher, positive, empty_latent(patcher, size), 0, 1, 1.0, "trailing",
                            "euler_ancestral", 1.0)
    if cuda and cuda_graphs.graphs_of(vae, cuda_graphs.DECODE):
        vae.decode(samples)
    seconds = time.perf_counter() - began
    state = engine.state_of(patcher)
    route = engine.status(patcher)
    if state.packing:  # at 64x64 few layers pack exactly; each size's first run checks its own
        route = route.replace(state.packing, ", conv layers packed for oneDNN at each size's first run")
    message = f"{route}, {size}x{size} warm-up {seconds:.1f} s"
    if cuda:
        message += engine.graph_note("text encoders", cuda_graphs.graphs_of(clip, cuda_graphs.TEXT))
        message += engine.graph_note("TAESD decode", cuda_graphs.graphs_of(vae, cuda_graphs.DECODE))
    log.info("ADD Turbo: %s", message)
    return message, seconds
