"""The sampling engine (the loader's `engine` option): the few turbo steps without the host's per-call
sampling machinery.

On every UNet call the host's sampler copies and batches the conditioning, asks for free memory and
runs its guider and wrappers. For a guidance-free turbo model and one plain prompt that computes the
same inputs at every step, so the engine prepares them once per run with the host's own functions
(host_api.DirectUNet) and runs the pack's sampler (add_turbo.samplers, with the per-step noise of
add_turbo.noise) over the host's apply_model: its latents equal the normal path's. On a CUDA GPU the
step loop is recorded as one CUDA graph per (batch, size, schedule, sampler) and replayed. On CPU
the UNet's conv layers run with their weights packed once in oneDNN's layout (add_turbo.packed_conv),
where that reproduces the host's output bit for bit.

Whatever it cannot reproduce (weight patches, hooks, ControlNet, areas, masks, ...) goes the normal
way, with the reason logged once per model and reason.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
import weakref

import torch

from ..add_turbo import noise, packed_conv, samplers
from . import host_api

log = logging.getLogger(__name__)

ENGINE_OPTION = "add_turbo_engine"  # key in MODEL.model_options: clones of the model carry it
ENGINE_MODES = ("off", "on")
GRAPHS_PER_MODEL = 4  # recorded graphs kept per model; each holds its own GPU memory pool
CUDA_WARM_UP_SIZE = 512  # the size recorded at load: what the models are made for
SMALL_WARM_UP_SIZE = 64  # elsewhere nothing is recorded: a small run checks the path
# Conditioning entries of one plain prompt: the pooled output and SDXL size conditioning.
PLAIN_PROMPT_KEYS = frozenset({"pooled_output", "width", "height", "crop_w", "crop_h", "target_width",
                               "target_height"})
AREA_KEYS = frozenset({"area", "strength", "mask", "mask_strength", "set_area_to_bounds"})
TIMESTEP_RANGE_KEYS = frozenset({"start_percent", "end_percent", "timestep_start", "timestep_end",
                                 "clip_start_percent", "clip_end_percent"})


class EngineState:
    """Per base model (shared by its clones): the recorded graphs and how the last runs went."""

    def __init__(self):
        self.graphs: collections.OrderedDict = collections.OrderedDict()  # key -> StepGraph, oldest first
        self.weights = None  # where the weights were when the graphs were recorded
        self.index = None  # WeightIndex of the base model, made at its first recording
        self.runs = collections.Counter()  # "direct", "recorded", "replayed", "fallback"
        self.last = "not run yet"
        self.capture_failure = None  # why recording failed once: not tried again for this model
        self.packs = weakref.WeakKeyDictionary()  # CPU: conv layer -> PackedConv (add_turbo.packed_conv)
        self.packing = ""  # CPU: how many conv layers the last direct run packed


_STATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOGGED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # patcher -> reasons already logged


def state_of(patcher) -> EngineState:
    return _STATES.setdefault(patcher.model, EngineState())


def set_engine(patcher, mode: str) -> None:
    """Turn the engine on or off for `patcher` and its later clones."""
    if mode not in ENGINE_MODES:
        raise ValueError(f"engine must be one of {ENGINE_MODES}, got {mode!r}")
    if mode == "on":
        patcher.model_options[ENGINE_OPTION] = mode
    else:
        patcher.model_options.pop(ENGINE_OPTION, None)


def engine_on(patcher) -> bool:
    return patcher.model_options.get(ENGINE_OPTION) == "on"


def conditioning_obstacle(positive) -> str | None:
    """Why `positive` is more than one plain prompt, or None."""
    if len(positive) != 1:
        return f"the conditioning has {len(positive)} entries (combined or concatenated prompts)"
    keys = set(positive[0][1])
    if "control" in keys:
        return "the conditioning has a ControlNet"
    if "hooks" in keys:
        return "the conditioning has hooks (e.g. a hook LoRA)"
    if keys & AREA_KEYS:
        return f"the conditioning has an area, strength or mask ({', '.join(sorted(keys & AREA_KEYS))})"
    if keys & TIMESTEP_RANGE_KEYS:
        return "the conditioning has a timestep range"
    unknown = sorted(keys - PLAIN_PROMPT_KEYS)
    if unknown:
        return f"the conditioning has entries the engine does not know ({', '.join(unknown)})"
    return None


def fallback_reason(patcher, positive, latent, denoise_mask=None, device=None) -> str | None:
    """Why this sampling call must take the normal path, or None when the engine computes the same.

    Args:
        latent: [B, C, h, w] as sampling gets it. denoise_mask: the latent's noise mask, if any.
        device: where the model computes (default its load device): on CUDA the size must suit a graph.
    """
    device = patcher.load_device if device is None else torch.device(device)
    if denoise_mask is not None:
        return "the latent has a noise mask (inpainting)"
    if latent.is_nested or latent.ndim != 4:
        return "the latent is not one [batch, channels, height, width] tensor"
    if device.type == "cuda" and (latent.shape[-1] % 8 or latent.shape[-2] % 8):
        return (f"the image is {latent.shape[-1] * 8}x{latent.shape[-2] * 8} px: CUDA graphs need sides "
                "that are multiples of 64 px")
    return host_api.direct_sampling_obstacle(patcher, own_options=(ENGINE_OPTION,)) or conditioning_obstacle(positive)


def log_fallback(patcher, reason: str) -> None:
    """Log why the engine is not used, once per model and reason."""
    seen = _LOGGED.setdefault(patcher, set())
    if reason not in seen:
        seen.add(reason)
        log.warning("ADD Turbo engine: %s: sampling the normal way", reason)
    state = state_of(patcher)
    state.runs["fallback"] += 1
    state.last = f"normal path ({reason})"


def capture_obstacle(patcher, unet) -> str | None:
    """Why this run's steps are not recorded as a CUDA graph (they run directly instead), or None."""
    if unet.start.device.type != "cuda":
        return f"no CUDA graphs on {unet.start.device.type}"
    if host_api.has_compile_wrapper(patcher):
        return "the UNet is compiled: torch.compile runs it"
    if not host_api.fully_loaded(patcher):
        return "the model is only partly in GPU memory"
    if not all(torch.is_tensor(v) for v in unet.inputs.values()):
        return "the conditioning holds inputs that are not tensors"
    return None


def noise_steps(sigmas: torch.Tensor, sampler: str, eta: float) -> list[int]:
    """The steps (1-based, as noise_for_step gets them) for which samplers.sample draws fresh noise."""
    name, amount = ("euler_ancestral", 0.0) if sampler == "euler" else (sampler, eta)
    values = [float(s) for s in sigmas]
    return [i + 1 for i in range(len(values) - 1) if samplers.needs_noise(name, amount, values[i], values[i + 1])]


def run_steps(unet, inputs: dict, start: torch.Tensor, sigmas: torch.Tensor, sampler: str, eta: float,
              noise_for_step, callback=None, device_sigmas: torch.Tensor | None = None) -> torch.Tensor:
    """The pack's sampler over direct UNet calls: `start` [B, C, h, w] at sigmas[0] -> the sampled
    latent [B, C, h, w] (model space, fp32).

    The same arithmetic as sampling._turbo_sampler_function under the host's sampler: each call gets
    timestep sigma * ones([B]) with sigma on the device. `sigmas` [steps + 1] stay on the CPU, so
    nothing here waits for the device (a CUDA graph can record it whole). `device_sigmas`: the same
    values on the device (default unet.sigmas, which live as long as this run).
    """
    s_in = start.new_ones([start.shape[0]])
    device_sigmas = unet.sigmas if device_sigmas is None else device_sigmas
    on_device = {float(s): d for s, d in zip(sigmas[:-1], device_sigmas[:-1], strict=True)}

    def denoiser(x, sigma):
        return unet(x, on_device[float(sigma)] * s_in, inputs)

    return samplers.sample(denoiser, start, sigmas, sampler, eta, noise_for_step, callback)


def record(body, device: torch.device):
    """body() recorded as a CUDA graph -> (graph, body's output: a static buffer each replay rewrites).

    body must do device work only (no host syncs, no host-to-device copies). One warm-up run on a
    side stream comes first: lazy initialisation (cuBLAS / cuDNN handles, algorithm search) must not
    happen during capture. Capture errors are thread-local: the server's threads may query the GPU
    (free memory for the UI) meanwhile. Exercised only on a CUDA GPU.
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


class StepGraph:
    """The step loop of one (shape, schedule, sampler) recorded once over static buffers (start
    latent, conditioning, per-step noise); each run copies its inputs in and replays.

    Recording and replaying run only on a CUDA GPU; the CPU tests replace `record` with an eager
    stand-in, which checks the buffers and the cache, not the CUDA calls.
    """

    def __init__(self, unet, sigmas: torch.Tensor, sampler: str, eta: float, step_noise: dict):
        self.x = unet.start.clone()
        self.inputs = {k: v.clone() for k, v in unet.inputs.items()}
        self.noise = {step: n.to(device=self.x.device, copy=True) for step, n in step_noise.items()}
        # The graph reads the sigmas by address on every replay: its own copies, not the recording run's.
        self.sigmas, sigmas = unet.sigmas.clone(), sigmas.clone()

        def body():
            return run_steps(unet, self.inputs, self.x, sigmas, sampler, eta, self.noise.__getitem__,
                             device_sigmas=self.sigmas)

        self.graph, self.out = record(body, unet.start.device)

    def replay(self, start: torch.Tensor, inputs: dict, step_noise: dict) -> torch.Tensor:
        """The sampled latent [B, C, h, w] for this run's inputs (a copy: the next replay overwrites)."""
        self.x.copy_(start)
        for key, value in inputs.items():
            self.inputs[key].copy_(value)
        for step, value in step_noise.items():
            self.noise[step].copy_(value)
        self.graph.replay()
        return self.out.clone()


class GraphedCall:
    """fn(*tensors, **options) replayed from a CUDA graph recorded once per input (shapes, dtypes,
    options) over static input buffers; each call returns copies of the graph's outputs. Tensor
    keyword arguments are inputs too; other keyword arguments (ints, None, strings) are part of the key.
    Used for TAESD's decode and the text encoders' layer stacks (host_api installs it only where
    nothing stands in the way of a graph).

    fn runs directly instead outside inference mode, when an argument is neither a tensor nor hashable,
    when `module`'s weights are not all on the inputs' device, and for good once a recording has
    failed. Graphs are dropped when the weights move.
    """

    def __init__(self, fn, module: torch.nn.Module, name: str):
        self.fn, self.module, self.name = fn, module, name
        self.graphs: collections.OrderedDict = collections.OrderedDict()  # key -> (inputs, graph, outputs)
        self.index = WeightIndex(module)
        self.weights = None  # the fingerprint the graphs were recorded with, all weights on the device
        self.failure = None
        self.runs = collections.Counter()  # "recorded", "replayed", "direct"
        self.obstacles_logged = set()  # reasons the caller found not to use the graph, logged once each

    def _key(self, args, kwargs):
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

    def __call__(self, *args, **kwargs):
        key, inputs = self._key(args, kwargs)
        # Graph buffers are inference tensors, as the host's executor makes every tensor: a call from
        # outside inference mode (another extension, a script) runs directly.
        usable = key is not None and not self.failure and torch.is_inference_mode_enabled()
        weights = self.index.fingerprint() if usable else None
        if weights is not None and weights != self.weights:  # moved: check the device once per move
            if all(t.device == inputs[0].device for t in self.index.tensors()):
                self.graphs.clear()
                self.weights = weights
        if weights is None or weights != self.weights:
            self.runs["direct"] += 1
            return self.fn(*args, **kwargs)
        entry = self.graphs.get(key)
        if entry is None:
            _, positional, names, options = key
            static = [t.clone() for t in inputs]

            def body():
                return self.fn(*static[:positional], **dict(zip(names, static[positional:], strict=True)),
                               **dict(options))

            began = time.perf_counter()
            try:
                graph, out = record(body, inputs[0].device)
            except RuntimeError as error:  # something in this host's module cannot be recorded
                self.graphs.clear()
                self.failure = f"recording a CUDA graph failed: {str(error)[:200]}"
                log.warning("ADD Turbo engine: %s: %s; running it directly from now on", self.name, self.failure)
                self.runs["direct"] += 1
                return self.fn(*args, **kwargs)
            entry = self.graphs[key] = (static, graph, out)
            while len(self.graphs) > GRAPHS_PER_MODEL:
                self.graphs.popitem(last=False)
            self.runs["recorded"] += 1
            log.info("ADD Turbo engine: recorded %s for %s as a CUDA graph in %.2f s", self.name,
                     ", ".join("x".join(map(str, shape)) for shape, _, _ in key[0]), time.perf_counter() - began)
        self.graphs.move_to_end(key)
        static, graph, out = entry
        for buffer, value in zip(static, inputs, strict=True):
            buffer.copy_(value)
        graph.replay()
        self.runs["replayed"] += 1
        return _copied(out)


def _copied(out):
    """Copies of the tensors in `out` (a tensor, or tuples and lists of tensors and None): the next
    replay overwrites the graph's own."""
    if torch.is_tensor(out):
        return out.clone()
    if isinstance(out, (tuple, list)):
        return type(out)(_copied(item) for item in out)
    return out


class WeightIndex:
    """Where a module's weights live, without walking the module tree on every call (about 2 ms for
    the SD UNet's 843 modules, against 0.2 ms here): its submodules' parameter and buffer dicts, listed
    once. The host moves and patches weights by replacing entries of these dicts or their data, which
    the index sees; a submodule swapped in (an object patch) is an engine obstacle. A recorded graph
    reads the weights by address, so a new fingerprint voids it."""

    def __init__(self, module: torch.nn.Module):
        self.dicts = [d for m in module.modules() for d in (m._parameters, m._buffers)]

    def tensors(self) -> list:
        return [t for d in self.dicts for t in d.values() if t is not None]

    def fingerprint(self) -> tuple:
        return tuple(t.data_ptr() for d in self.dicts for t in d.values() if t is not None)


def _replay(state: EngineState, patcher, unet, sigmas, seeds: list, sampler: str, eta: float) -> torch.Tensor:
    if state.index is None:
        state.index = WeightIndex(unet.base)
    weights = state.index.fingerprint()
    if weights != state.weights:
        state.graphs.clear()
        state.weights = weights
    shape = tuple(unet.start.shape)
    step_noise = {step: noise.grouped_noise(seeds, shape[1:], step=step) for step in noise_steps(sigmas, sampler, eta)}
    # The sigmas stand for (steps, strength, spacing): the sampler's step sizes are constants in the graph.
    attention = patcher.model_options.get("transformer_options", {}).get("optimized_attention_override")
    key = (shape, tuple((k, tuple(v.shape), v.dtype) for k, v in sorted(unet.inputs.items())),
           tuple(sigmas.tolist()), sampler, eta, id(attention))
    graph = state.graphs.get(key)
    if graph is None:
        began = time.perf_counter()
        graph = StepGraph(unet, sigmas, sampler, eta, step_noise)
        state.graphs[key] = graph
        while len(state.graphs) > GRAPHS_PER_MODEL:
            state.graphs.popitem(last=False)
        state.runs["recorded"] += 1
        log.info("ADD Turbo engine: recorded the %d step(s) at %s as a CUDA graph in %.1f s", len(sigmas) - 1,
                 "x".join(map(str, shape)), time.perf_counter() - began)
    state.graphs.move_to_end(key)
    state.runs["replayed"] += 1
    state.last = "CUDA graph"
    return graph.replay(unet.start, unet.inputs, step_noise)


def sample(patcher, positive, latent, start_noise, sigmas, seed: int | list[tuple[int, int]], sampler: str,
           eta: float, callback=None, positives: list | None = None) -> torch.Tensor:
    """Sample through the engine; call only when `fallback_reason` is None.

    Args:
        latent: [B, C, h, w] (zeros for text to image); start_noise: [B, C, h, w] on the CPU;
        sigmas: [steps + 1] on the CPU, ending in 0; seed: keys the per-step noise of image k by
        seed + k, or, for a batch of several prompts' images, groups (seed, rows) in batch order
        (noise.grouped_noise); callback: the host's step callback (step, x0, x, total_steps); a
        replayed graph reports once, at the end. positives: one plain prompt per seed group (each
        as `positive`, with the same shapes), for a batch of several prompts; default `positive`.
    Returns:
        the sampled latent [B, C, h, w], fp32 on the load device, as the host's guider returns it.
    """
    state = state_of(patcher)
    steps = len(sigmas) - 1
    seeds = [(seed, latent.shape[0])] if isinstance(seed, int) else list(seed)
    if sum(rows for _, rows in seeds) != latent.shape[0]:
        raise ValueError(f"the seed groups {seeds} do not cover the batch of {latent.shape[0]}")
    groups = None
    if positives is not None:
        if len(positives) != len(seeds):
            raise ValueError(f"{len(positives)} prompts for {len(seeds)} seed groups")
        groups = [(p, rows) for p, (_, rows) in zip(positives, seeds, strict=True)]
    with host_api.DirectUNet(patcher, positive, start_noise, latent, seeds[0][0], sigmas, groups) as unet:
        obstacle = capture_obstacle(patcher, unet) or state.capture_failure
        if obstacle is None:
            try:
                with torch.inference_mode():  # as the executor runs nodes: the buffers stay writable in place
                    x = _replay(state, patcher, unet, sigmas, seeds, sampler, eta)
            except RuntimeError as error:  # something in this host's UNet cannot be recorded
                state.graphs.clear()
                state.capture_failure = obstacle = f"recording a CUDA graph failed: {str(error)[:200]}"
                log.warning("ADD Turbo engine: %s; running the steps directly from now on", obstacle)
            else:
                if callback is not None:
                    callback(steps - 1, x, x, steps)
                return unet.finish(x)
        if unet.device.type == "cuda":
            _log_once(patcher, f"ADD Turbo engine: {obstacle}: running the steps directly, without a CUDA graph")

        def noise_for_step(step):
            return noise.grouped_noise(seeds, unet.start.shape[1:], step=step, device=unet.device)

        def report(i, x, denoised):
            if callback is not None:
                callback(i, denoised, x, steps)

        with _packed_convolutions(patcher, unet, state):
            x = run_steps(unet, unet.inputs, unet.start, sigmas, sampler, eta, noise_for_step, report)
        state.runs["direct"] += 1
        state.last = f"direct path ({obstacle}){state.packing}"
        return unet.finish(x)


@contextlib.contextmanager
def _packed_convolutions(patcher, unet, state: EngineState):
    """On CPU, the direct path's conv layers run with weights packed for oneDNN where that gives the
    host's output bit for bit (checked per layer and input shape); state.packing says how many."""
    state.packing = ""
    if unet.device.type != "cpu" or not packed_conv.available() or host_api.has_compile_wrapper(patcher):
        yield
        return
    with host_api.packed_convolutions(patcher, state.packs) as layers:
        yield
    packed = [state.packs[layer] for layer in layers if state.packs[layer].packed is not None]
    size = sum(pack.nbytes() for pack in packed) / 2**30
    state.packing = f", {len(packed)} of {len(layers)} conv layers packed for oneDNN (+{size:.2f} GiB)"


def _log_once(patcher, message: str) -> None:
    seen = _LOGGED.setdefault(patcher, set())
    if message not in seen:
        seen.add(message)
        log.info(message)


def status(patcher) -> str:
    """How the engine ran the model's last sampling, for the loader's message."""
    return f"engine: {state_of(patcher).last}"


def warm_up(patcher, clip, vae=None) -> str:
    """One run at ADD Turbo Sample's defaults (1 step, euler_ancestral), batch 1: on a CUDA GPU it
    records the 512x512 graph now (and the TAESD decode's, where `vae` records one), elsewhere a 64x64
    run checks the path. Returns the loader's message."""
    from .sampling import sample_latent

    cuda = patcher.load_device.type == "cuda"
    size = CUDA_WARM_UP_SIZE if cuda else SMALL_WARM_UP_SIZE
    positive = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    latent = torch.zeros([1, patcher.model.latent_format.latent_channels, size // 8, size // 8])
    began = time.perf_counter()
    samples = sample_latent(patcher, positive, latent, 0, 1, 1.0, "trailing", "euler_ancestral", 1.0)
    if cuda and getattr(vae, "decode_graph", None) is not None:
        vae.decode(samples)
    state = state_of(patcher)
    route = status(patcher)
    if state.packing:  # at 64x64 few layers pack exactly; each size's first run checks its own
        route = route.replace(state.packing, ", conv layers packed for oneDNN at each size's first run")
    message = f"{route}, {size}x{size} warm-up {time.perf_counter() - began:.1f} s"
    if cuda:
        message += _graph_note("text encoders", list((getattr(clip, "encoder_graphs", None) or {}).values()))
        message += _graph_note("TAESD decode", [vae.decode_graph] if getattr(vae, "decode_graph", None) else [])
    log.info("ADD Turbo: %s", message)
    return message


def _graph_note(label: str, graphs: list) -> str:
    """How the warm-up ran these GraphedCalls, for the loader's message ("" when there are none)."""
    if not graphs:
        return ""
    if all(graph.runs["recorded"] for graph in graphs):
        return f"; {label}: CUDA graphs per input size"
    failure = next((graph.failure for graph in graphs if graph.failure), "the log says why")
    return f"; {label}: the host's ({failure})"
