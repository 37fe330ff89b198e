"""torch.compile for the loader's `compile` option: modes, the compiled UNet module.

None of it changes what is computed: compiled kernels reorder the same arithmetic (fp rounding may
differ). How the compiled modules are put into the host's models is in host_api/; where the
compiled graphs are kept between starts is in compile_cache.py; the warm-up is in warm_up.py.
"""

import contextlib
import contextvars
import logging

import torch

from ..add_turbo.acceleration.cuda_graphs import copied

log = logging.getLogger(__name__)

# torch.compile modes: plain inductor kernels, or the same kernels replayed as CUDA graphs (one
# launch per UNet call instead of hundreds; on GPU only).
COMPILE_MODES = {"off": None, "inductor": "default", "inductor + cuda graphs": "reduce-overhead"}
_NOT_YET = object()  # no UNet call seen yet
# The on-disk cache of the model being loaded: set by the loader node around load_turbo, so the
# compile_fn calls inside (host_api.compile_unet / compile_text_encoders) need no extra parameter.
_LOADING_INTO: contextvars.ContextVar = contextvars.ContextVar("add_turbo_compile_cache", default=None)


@contextlib.contextmanager
def caching_into(cache):
    """Functions compiled by compile_fn inside this block compile into, and load from, `cache`
    (a compile_cache.CompileCache; None: torch's own cache settings)."""
    token = _LOADING_INTO.set(cache)
    try:
        yield
    finally:
        _LOADING_INTO.reset(token)


def check_compile(compile_mode: str, device: torch.device) -> None:
    """Refuse unknown modes and CUDA graphs off the GPU, with the fix."""
    if compile_mode not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {list(COMPILE_MODES)}, got {compile_mode!r}")
    if COMPILE_MODES[compile_mode] == "reduce-overhead" and device.type != "cuda":
        raise ValueError(f"compile 'inductor + cuda graphs' needs a CUDA GPU (this host computes on {device.type}): "
                         "choose 'inductor' or 'off'")


def compile_fn(fn, compile_mode: str, freeze: bool = False):
    """torch.compile `fn`; with CUDA graphs, each call is one graph replay that returns copies.

    Each call begins a new graph step, so the replay may reuse the buffers of the previous one
    (without it, a still-referenced earlier output makes the graph trees record a new graph on
    every other call), and the copies mean nothing a caller keeps is overwritten by a later replay.
    `freeze` folds the weights into the graph as constants (prepacked for the CPU's conv and
    matmul kernels): faster on CPU, but blind to later weight changes (see CompiledUNet).
    Inside `caching_into(cache)` every call runs in the cache's scope: torch compiles lazily, at the
    first call of each shape, and must find the pack's folder and key tag then.
    """
    mode = COMPILE_MODES[compile_mode]
    if freeze:
        compiled = torch.compile(fn, backend="inductor", options={"freezing": True}, dynamic=False)
    else:
        compiled = torch.compile(fn, backend="inductor", mode=mode, dynamic=False)
    if (cache := _LOADING_INTO.get()) is not None:
        compiled = cache.wrap(compiled)
    if mode != "reduce-overhead":
        return compiled

    def replay(*args, **kwargs):
        torch.compiler.cudagraph_mark_step_begin()
        return copied(compiled(*args, **kwargs))

    return replay


class CompiledUNet(torch.nn.Module):
    """The compiled UNet as a module: the host swaps it in for `diffusion_model` while sampling.

    Attributes the host reads (dtype, ...) come from the UNet itself, which is not registered as a
    submodule: no second registration of its weights. A graph with frozen weights is used only while
    the weights are those it was compiled with: once the host patches them (a LoRA on a clone of the
    model, say), the UNet runs uncompiled rather than with stale weights.
    """

    def __init__(self, unet, run, base_model=None):
        super().__init__()
        object.__setattr__(self, "unet", unet)
        object.__setattr__(self, "base_model", base_model)  # set when the weights are frozen
        self.run = run
        self.frozen_weights = _NOT_YET

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "unet"), name)

    def forward(self, *args, **kwargs):
        if self.base_model is not None:
            weights = getattr(self.base_model, "current_weight_patches_uuid", None)
            if self.frozen_weights is _NOT_YET:
                self.frozen_weights = weights
            elif self.frozen_weights != weights:
                log.warning("ADD Turbo: the UNet's weights changed since it was compiled (a LoRA or other patch): "
                            "running it uncompiled; load the model again to compile the patched weights")
                return self.unet(*args, **kwargs)
        return self.run(*args, **kwargs)


def unmutated_input(forward):
    """The host's CLIP layers add into their input in place (`x += ...`); CUDA graphs refuse a graph
    that mutates an input, so the copy is made inside the compiled region."""

    def encoder(x, *args, **kwargs):
        return forward(x.clone(), *args, **kwargs)

    return encoder
