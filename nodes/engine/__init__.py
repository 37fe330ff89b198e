"""The sampling engine (the loader's `engine` option): the few turbo steps without the host's per-call
sampling machinery.

On every UNet call the host's sampler copies and batches the conditioning, asks for free memory and
runs its guider and wrappers. For a guidance-free turbo model and one plain prompt that computes the
same inputs at every step, so the engine prepares them once per run with the host's own functions
(host_api.DirectUNet) and runs the pack's sampler (add_turbo.samplers, with the per-step noise of
add_turbo.noise) over the host's apply_model: its latents equal the normal path's. On a CUDA GPU the
step loop is recorded as one CUDA graph per (batch, size, schedule, sampler) and replayed
(add_turbo.acceleration.cuda_graphs). On CPU the UNet's conv layers run with their weights packed once
in oneDNN's layout (add_turbo.acceleration.packed_conv), where that reproduces the host's output bit
for bit.

- gates: whether the engine is on, and why a run must take the normal path (weight patches, hooks,
  ControlNet, areas, masks, ...: logged once per model and reason) or run unrecorded;
- direct: the run itself, its step graphs and CPU packing, and the status the loader shows.
"""

from .direct import EngineState, graph_note, log_fallback, noise_steps, run_steps, sample_direct, state_of, status
from .gates import ENGINE_MODES, ENGINE_OPTION, capture_obstacle, engine_on, fallback_reason, set_engine

__all__ = ["ENGINE_MODES", "ENGINE_OPTION", "EngineState", "capture_obstacle", "engine_on", "fallback_reason",
           "graph_note", "log_fallback", "noise_steps", "run_steps", "sample_direct", "set_engine", "state_of",
           "status"]
