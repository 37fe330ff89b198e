"""Per-image stage times of the GPU bench, shared by the pack's and diffusers' runners: the device sync
and the Stages record every run returns."""

from __future__ import annotations

import time

from bench import gpu_plan as plan


def sync():
    """Wait for the device's queued work (nothing to wait for on the CPU)."""
    import torch

    if plan.DEVICE == "cuda":
        torch.cuda.synchronize()


class Stages:
    """Per-image stage times (seconds). With `sync` the device is synchronised at each boundary, so the
    stages add up to the end-to-end time; without it marks cost nothing (the timed images)."""

    def __init__(self, sync: bool = True):
        self.sync, self.times, self.image = sync, {}, None
        self.start = time.perf_counter()

    def mark(self, name):
        if not self.sync:
            return
        sync()
        now = time.perf_counter()
        self.times[name] = self.times.get(name, 0.0) + now - self.start
        self.start = now
