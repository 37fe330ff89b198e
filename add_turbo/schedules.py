"""Timestep schedules for ADD-distilled models (SD-Turbo, SDXL-Turbo).

Two spacings:
- "trailing": the ADD paper / diffusers model cards. For n steps over the strength window
  T = strength * 1000 the timesteps are t_k = round(T - k * T / n) - 1, k = 0..n-1
  (txt2img, n = 4: 999, 749, 499, 249).
- "sai": Stability's 100-grid (turbo demo, ComfyUI's SDTurboScheduler): t_k = round(T) - 1 - 100 k
  (txt2img, n = 4: 999, 899, 799, 699).

`steps` is always the number of steps actually run and `strength` is continuous in (0, 1]; unlike
diffusers (int(steps * strength) steps, possibly zero) and ComfyUI (denoise floored to tenths).
"""

from __future__ import annotations

import torch

NUM_TRAIN_TIMESTEPS = 1000
SPACINGS = ("trailing", "sai")
MAX_STEPS = 10
SAI_GRID_STRIDE = 100


def training_sigmas(
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS, beta_start: float = 0.00085, beta_end: float = 0.012
) -> torch.Tensor:
    """Sigmas of the DDPM "scaled_linear" training schedule both turbo models use.

    Returns:
        float32 tensor [num_train_timesteps]; sigma(t) = sqrt((1 - alphabar_t) / alphabar_t),
        sigma(999) = 14.6146.
    """
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return ((1 - alphas_cumprod) / alphas_cumprod).sqrt().float()


def validate(steps: int, strength: float, spacing: str) -> None:
    """Raise ValueError with the fix when a (steps, strength, spacing) triple has no schedule."""
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be an integer from 1 to {MAX_STEPS}, got {steps!r}")
    if not isinstance(strength, (int, float)) or not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1] (1.0 = from pure noise), got {strength!r}")
    window = strength * NUM_TRAIN_TIMESTEPS
    if spacing == "trailing" and window < steps:
        raise ValueError(
            f"strength {strength} leaves {window:.2f} training timesteps for {steps} steps: "
            f"use strength >= {steps / NUM_TRAIN_TIMESTEPS:g} or fewer steps"
        )
    if spacing == "sai":
        fits = (round(window) - 1) // SAI_GRID_STRIDE + 1
        if round(window) < 1 or steps > fits:
            raise ValueError(
                f"'sai' spacing steps down by {SAI_GRID_STRIDE} timesteps: strength {strength} fits "
                f"at most {max(fits, 0)} step(s), got {steps}. Use fewer steps, a higher strength, "
                f"or spacing 'trailing'"
            )


def turbo_timesteps(steps: int, strength: float = 1.0, spacing: str = "trailing") -> list[int]:
    """Integer training timesteps to run, highest first.

    Args:
        steps: steps actually run, 1..10.
        strength: (0, 1]; the schedule covers training timesteps [0, strength * 1000).
        spacing: "trailing" or "sai".
    Returns:
        `steps` distinct descending timesteps in [0, 999].
    """
    validate(steps, strength, spacing)
    window = strength * NUM_TRAIN_TIMESTEPS
    if spacing == "sai":
        return [round(window) - 1 - SAI_GRID_STRIDE * k for k in range(steps)]
    return [max(round(window - k * window / steps) - 1, 0) for k in range(steps)]


def turbo_sigmas(
    steps: int, strength: float = 1.0, spacing: str = "trailing", sigmas_table: torch.Tensor | None = None
) -> torch.Tensor:
    """Sigma schedule for the sampler: the chosen timesteps' sigmas followed by a final 0.

    Args:
        sigmas_table: per-timestep sigmas [1000]; defaults to `training_sigmas()`.
    Returns:
        float32 tensor [steps + 1], descending, last element 0.
    """
    table = training_sigmas() if sigmas_table is None else sigmas_table
    timesteps = torch.tensor(turbo_timesteps(steps, strength, spacing), dtype=torch.long)
    return torch.cat([table[timesteps].float(), table.new_zeros(1, dtype=torch.float32)])
