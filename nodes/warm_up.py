"""The loader's warm-ups, run once at load so that the first image is not the slow one.

- compile: torch.compile's graphs compiled, or loaded from the on-disk cache, at 512x512 batch 1;
- engine: on a CUDA GPU the 512x512 step graph (and TAESD's and the text encoders') recorded now,
  elsewhere a 64x64 run that checks the direct path;
- openvino: the UNet converted to OpenVINO and compiled at 512x512 batch 1, or loaded from the disk
  cache.
Each returns the loader's message and the warm-up's seconds.
"""

import logging
import time

import torch

from . import compile_cache, compiling, engine, host_api
from .latent_sampling import sample_latent

log = logging.getLogger(__name__)

COMPILE_WARM_UP_SIZE = 512
CUDA_WARM_UP_SIZE = 512  # the engine's size recorded at load: what the models are made for
SMALL_WARM_UP_SIZE = 64  # elsewhere nothing is recorded: a small run checks the path


def _empty_latent(model, size: int) -> torch.Tensor:
    return torch.zeros([1, model.model.latent_format.latent_channels, size // 8, size // 8])


def compile_warm_up(model, clip, vae, compile_mode: str, cache=None,
                    size: int = COMPILE_WARM_UP_SIZE) -> tuple[str, float]:
    """Compile (and record CUDA graphs) now, at size x size batch 1.

    With an on-disk `cache` (compile_cache.CompileCache) torch loads the graphs a previous start
    compiled instead of compiling them; torch's cache counters tell which happened.
    """
    before = compile_cache.counts()
    start = time.perf_counter()
    latent = _empty_latent(model, size)
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
    samples = sample_latent(patcher, positive, _empty_latent(patcher, size), 0, 1, 1.0, "trailing",
                            "euler_ancestral", 1.0)
    if cuda and getattr(vae, "decode_graph", None) is not None:
        vae.decode(samples)
    seconds = time.perf_counter() - began
    state = engine.state_of(patcher)
    route = engine.status(patcher)
    if state.packing:  # at 64x64 few layers pack exactly; each size's first run checks its own
        route = route.replace(state.packing, ", conv layers packed for oneDNN at each size's first run")
    message = f"{route}, {size}x{size} warm-up {seconds:.1f} s"
    if cuda:
        message += engine.graph_note("text encoders", list((getattr(clip, "encoder_graphs", None) or {}).values()))
        message += engine.graph_note("TAESD decode", [vae.decode_graph] if getattr(vae, "decode_graph", None) else [])
    log.info("ADD Turbo: %s", message)
    return message, seconds


def openvino_warm_up(model, clip, vae, note: str, size: int = COMPILE_WARM_UP_SIZE) -> tuple[str, float]:
    """Convert (or load from disk) and compile the OpenVINO models now, at size x size batch 1: the UNet,
    the text encoders' layer stacks and, with TAESD, its decode. `note` names the precision chosen; the
    message says what runs on OpenVINO and whether this start converted or found the models on disk."""
    parts = {"UNet": [host_api.openvino_unet_of(model).call],
             "text encoders": list((getattr(clip, "encoder_openvino", None) or {}).values()),
             "TAESD decode": [vae.openvino_decode] if getattr(vae, "openvino_decode", None) else []}
    began = time.perf_counter()
    with torch.inference_mode():
        positive = clip.encode_from_tokens_scheduled(clip.tokenize(""))
        vae.decode(sample_latent(model, positive, _empty_latent(model, size), 0, 1, 1.0, "trailing", "euler", 0.0))
    seconds = time.perf_counter() - began
    calls = [call for group in parts.values() for call in group]
    failed = [f"{name}: {call.failure}" for name, group in parts.items() for call in group if call.failure]
    on_openvino = ", ".join(name for name, group in parts.items() if group and not any(c.failure for c in group))
    converted = sum(call.runs["converted"] for call in calls)
    done = "converted and compiled" if converted else "loaded from the disk cache"
    message = f"{note}: {on_openvino or 'nothing'} {done}, {size}x{size} warm-up {seconds:.1f} s"
    if failed:
        message += "; in torch: " + "; ".join(failed)
    log.info("ADD Turbo: %s (%s)", message, parts["UNet"][0].folder)
    return message, seconds
