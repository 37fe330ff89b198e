"""Measurements shared by the benchmarks: how far an image is from a reference (max abs, PSNR) and the
process's resident memory (Linux /proc). Images are tensors on a 0-1 scale; torch is never imported here."""

from __future__ import annotations

import math
from pathlib import Path


def max_abs(image, reference) -> float:
    """The largest absolute difference of two images of the same shape."""
    return (image - reference).abs().max().item()


def mean_abs(image, reference) -> float:
    """The mean absolute difference of two images of the same shape."""
    return (image - reference).abs().mean().item()


def psnr(image, reference) -> float:
    """PSNR in dB of two images on a 0-1 scale; inf when they are identical."""
    mse = (image - reference).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def difference(image, reference) -> tuple[float, float]:
    """(max abs on a 0-1 scale, PSNR in dB) of two images [B, H, W, 3], both clamped to 0-1 first."""
    a, b = image.float().clamp(0, 1), reference.float().clamp(0, 1)
    if a.shape != b.shape:
        raise ValueError(f"image {tuple(a.shape)} vs reference {tuple(b.shape)}")
    return max_abs(a, b), psnr(a, b)


def status_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status in KiB (VmRSS: resident now, VmHWM: the
    peak since the last reset_peak_rss)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def reset_peak_rss() -> None:
    """Start a new peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM to the current RSS)."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_gib() -> float:
    """The process's peak resident memory in GiB since the last reset_peak_rss (NaN where there is no VmHWM)."""
    try:
        return status_kib("VmHWM") / 2**20
    except RuntimeError:
        return float("nan")
