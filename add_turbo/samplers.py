"""Few-step samplers for ADD models in k-diffusion form.

`x` lives in sigma space (x = x0 + sigma * eps); a denoiser maps (x, sigma) to the x0 prediction.
Each step calls the denoiser exactly once: there is no unconditional pass, ADD models are
guidance-free (arXiv 2311.17042, Sec. 4).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

SAMPLERS = ("euler_ancestral", "euler", "consistency")

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(x [B, C, H, W], sigma: 0-d tensor) -> denoised x0 prediction [B, C, H, W]."""
NoiseForStep = Callable[[int], torch.Tensor]
"""step index (1 = noise added after the first model call) -> standard normal noise shaped like x."""


def ancestral_sigmas(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """Split a step from sigma to sigma_next into a deterministic part and fresh noise.

    Returns:
        (sigma_down, sigma_up): Euler moves x to sigma_down, then noise * sigma_up is added.
        eta = 0 gives (sigma_next, 0), plain Euler; eta = 1 is the reference (Stability, diffusers).
    """
    if sigma_next == 0 or eta == 0:
        return sigma_next, 0.0
    sigma_up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - sigma_up**2), sigma_up


def euler_ancestral_step(
    x: torch.Tensor,
    denoised: torch.Tensor,
    sigma: float,
    sigma_next: float,
    eta: float = 1.0,
    noise: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """One Euler ancestral step [B, C, H, W] -> [B, C, H, W]; at sigma_next = 0 it returns `denoised`."""
    if sigma_next == 0:
        return denoised
    sigma_down, sigma_up = ancestral_sigmas(sigma, sigma_next, eta)
    x = x + (x - denoised) / sigma * (sigma_down - sigma)
    if sigma_up > 0:
        if noise is None:
            raise ValueError("euler_ancestral with eta > 0 needs noise for every step but the last")
        x = x + noise * sigma_up
    return x


def consistency_step(denoised: torch.Tensor, sigma_next: float, noise: Optional[torch.Tensor]) -> torch.Tensor:
    """Consistency ("lcm") step: jump to x0, then fully re-noise to sigma_next."""
    if sigma_next == 0:
        return denoised
    if noise is None:
        raise ValueError("consistency sampling needs noise for every step but the last")
    return denoised + noise * sigma_next


def needs_noise(sampler: str, eta: float, sigma: float, sigma_next: float) -> bool:
    """Whether the step from sigma to sigma_next draws fresh noise."""
    if sigma_next == 0:
        return False
    if sampler == "consistency":
        return True
    return sampler == "euler_ancestral" and eta > 0


def sample(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    sampler: str = "euler_ancestral",
    eta: float = 1.0,
    noise_for_step: Optional[NoiseForStep] = None,
    callback: Optional[Callable[[int, torch.Tensor, torch.Tensor], None]] = None,
) -> torch.Tensor:
    """Run the few-step loop: one denoiser call per step.

    Args:
        denoiser: see `Denoiser`.
        x: the noised starting latent [B, C, H, W] at sigmas[0] (see `noised_start`).
        sigmas: [steps + 1] descending, ending in 0.
        sampler: one of SAMPLERS; "euler" is euler_ancestral with eta 0.
        eta: ancestral noise amount for "euler_ancestral" (1.0 = reference).
        noise_for_step: fresh noise for step i (1-based), only called when a step needs it.
        callback: called as callback(step_index, x, denoised) after each step.
    Returns:
        the final latent [B, C, H, W] (the last step's x0 prediction).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    values = [float(s) for s in sigmas]
    if len(values) < 2 or values[-1] != 0:
        raise ValueError("sigmas must hold at least one step and end in 0")
    if sampler == "euler":
        sampler, eta = "euler_ancestral", 0.0
    for i in range(len(values) - 1):
        sigma, sigma_next = values[i], values[i + 1]
        denoised = denoiser(x, sigmas[i])
        noise = None
        if needs_noise(sampler, eta, sigma, sigma_next):
            if noise_for_step is None:
                raise ValueError(f"{sampler} needs noise_for_step for multi-step sampling")
            noise = noise_for_step(i + 1).to(device=x.device, dtype=x.dtype)
        if sampler == "consistency":
            x = consistency_step(denoised, sigma_next, noise)
        else:
            x = euler_ancestral_step(x, denoised, sigma, sigma_next, eta, noise)
        if callback is not None:
            callback(i, x, denoised)
    return x


def noised_start(latent: torch.Tensor, noise: torch.Tensor, sigma: float, from_pure_noise: bool) -> torch.Tensor:
    """Starting point of sampling [B, C, H, W].

    From pure noise (txt2img: the first sigma is the schedule maximum) the reference scales noise by
    sqrt(1 + sigma^2) (Stability's sampler, ComfyUI's EPS noise scaling); img2img adds sigma * noise
    to the image latent.
    """
    scale = math.sqrt(1.0 + sigma**2) if from_pure_noise else sigma
    return latent + noise * scale
