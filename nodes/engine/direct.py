"""The engine's sampling run: the pack's sampler over direct UNet calls (host_api.DirectUNet), its
steps replayed from one CUDA graph per (batch, size, schedule, sampler) on a GPU, its conv layers over
packed oneDNN weights on a CPU; and what the loader's message says of the last run."""

from __future__ import annotations

import collections
import contextlib
import logging
import weakref

import torch

from ...add_turbo import noise, samplers
from ...add_turbo.acceleration import cuda_graphs, packed_conv
from ...add_turbo.log_once import log_once
from .. import host_api
from . import gates

log = logging.getLogger(__name__)


class EngineState:
    """Per base model (shared by its clones): the recorded step graphs and how the last runs went."""

    def __init__(self):
        self.runs = collections.Counter()  # "direct", "recorded", "replayed", "fallback"
        self.graphs = cuda_graphs.GraphCache("the steps", runs=self.runs)
        self.index = None  # WeightIndex of the base model, made at its first recording
        self.last = "not run yet"
        self.packs = weakref.WeakKeyDictionary()  # CPU: conv layer -> PackedConv
        self.packing = ""  # CPU: how many conv layers the last direct run packed


_STATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def state_of(patcher) -> EngineState:
    return _STATES.setdefault(patcher.model, EngineState())


def log_fallback(patcher, reason: str) -> None:
    """Note that the engine is not used for this run, logging why once per model and reason."""
    log_once(log, f"ADD Turbo engine: {reason}: sampling the normal way", owner=patcher, level=logging.WARNING)
    state = state_of(patcher)
    state.runs["fallback"] += 1
    state.last = f"normal path ({reason})"


def noise_steps(sigmas: torch.Tensor, sampler: str, eta: float) -> list[int]:
    """The steps (1-based, as noise_for_step gets them) for which samplers.sample draws fresh noise."""
    name, amount = ("euler_ancestral", 0.0) if sampler == "euler" else (sampler, eta)
    values = [float(s) for s in sigmas]
    return [i + 1 for i in range(len(values) - 1) if samplers.needs_noise(name, amount, values[i], values[i + 1])]


def run_steps(unet, inputs: dict, start: torch.Tensor, sigmas: torch.Tensor, sampler: str, eta: float,
              noise_for_step, callback=None, device_sigmas: torch.Tensor | None = None) -> torch.Tensor:
    """The pack's sampler over direct UNet calls: `start` [B, C, h, w] at sigmas[0] -> the sampled
    latent [B, C, h, w] (model space, fp32).

    The same arithmetic as latent_sampling's sampler function under the host's sampler: each call gets
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


class StepGraph:
    """The step loop of one (shape, schedule, sampler) recorded once over static buffers (start
    latent, conditioning, per-step noise); each run copies its inputs in and replays."""

    def __init__(self, unet, sigmas: torch.Tensor, sampler: str, eta: float, step_noise: dict):
        self.x = unet.start.clone()
        self.inputs = {k: v.clone() for k, v in unet.inputs.items()}
        self.noise = {step: n.to(device=self.x.device, copy=True) for step, n in step_noise.items()}
        # The graph reads the sigmas by address on every replay: its own copies, not the recording run's.
        self.sigmas, sigmas = unet.sigmas.clone(), sigmas.clone()

        def body():
            return run_steps(unet, self.inputs, self.x, sigmas, sampler, eta, self.noise.__getitem__,
                             device_sigmas=self.sigmas)

        self.graph, self.out = cuda_graphs.record(body, unet.start.device)

    def replay(self, start: torch.Tensor, inputs: dict, step_noise: dict) -> torch.Tensor:
        """The sampled latent [B, C, h, w] for this run's inputs (a copy: the next replay overwrites)."""
        self.x.copy_(start)
        for key, value in inputs.items():
            self.inputs[key].copy_(value)
        for step, value in step_noise.items():
            self.noise[step].copy_(value)
        self.graph.replay()
        return self.out.clone()


def _replay(state: EngineState, patcher, unet, sigmas, seeds: list, sampler: str, eta: float) -> torch.Tensor | None:
    """This run's latent from its step graph (recorded first when new); None once recording failed."""
    if state.index is None:
        state.index = cuda_graphs.WeightIndex(unet.base)
    state.graphs.follow_weights(state.index.fingerprint())
    shape = tuple(unet.start.shape)
    step_noise = {step: noise.grouped_noise(seeds, shape[1:], step=step) for step in noise_steps(sigmas, sampler, eta)}
    # The sigmas stand for (steps, strength, spacing): the sampler's step sizes are constants in the graph.
    attention = patcher.model_options.get("transformer_options", {}).get("optimized_attention_override")
    key = (shape, tuple((k, tuple(v.shape), v.dtype) for k, v in sorted(unet.inputs.items())),
           tuple(sigmas.tolist()), sampler, eta, id(attention))
    graph = state.graphs.entry(key, lambda: StepGraph(unet, sigmas, sampler, eta, step_noise),
                               f"({len(sigmas) - 1} step(s) at {'x'.join(map(str, shape))})")
    if graph is None:
        return None
    state.last = "CUDA graph"
    return graph.replay(unet.start, unet.inputs, step_noise)


def sample_direct(patcher, positive, latent, start_noise, sigmas, seed: int | list[tuple[int, int]], sampler: str,
                  eta: float, callback=None, positives: list | None = None) -> torch.Tensor:
    """Sample through the engine; call only when `gates.fallback_reason` is None.

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
        obstacle = gates.capture_obstacle(patcher, unet) or state.graphs.failure
        if obstacle is None:
            try:
                with torch.inference_mode():  # as the executor runs nodes: the buffers stay writable in place
                    x = _replay(state, patcher, unet, sigmas, seeds, sampler, eta)
            except RuntimeError as error:  # something in this host's UNet cannot be replayed
                state.graphs.fail(error)
                x = None
            if x is not None:
                if callback is not None:
                    callback(steps - 1, x, x, steps)
                return unet.finish(x)
            obstacle = state.graphs.failure
        if unet.device.type == "cuda":
            log_once(log, f"ADD Turbo engine: {obstacle}: running the steps directly, without a CUDA graph",
                     owner=patcher)

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


def status(patcher) -> str:
    """How the engine ran the model's last sampling, for the loader's message."""
    return f"engine: {state_of(patcher).last}"


def graph_note(label: str, graphs: list) -> str:
    """How a warm-up ran these GraphedCalls, for the loader's message ("" when there are none)."""
    if not graphs:
        return ""
    if all(graph.runs["recorded"] for graph in graphs):
        return f"; {label}: CUDA graphs per input size"
    failure = next((graph.failure for graph in graphs if graph.failure), "the log says why")
    return f"; {label}: the host's ({failure})"
