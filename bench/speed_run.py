"""What every child of the speed bench shares, the pack's (bench/speed.py) and the OpenVINO peer's
(bench/openvino_peer.py): the prompt, the seed, and the per-stage timer behind their JSON lines.

Standard library and bench.metrics only: the peer's children import it in a venv of their own.
"""

from __future__ import annotations

import contextlib
import time

from bench import metrics

PROMPT = "a cinematic photo of a red fox in the snow, golden hour"
SEED = 1234


class Timer:
    """Seconds and peak RSS (GiB) per stage of one run."""

    def __init__(self):
        self.stages, self.peaks = {}, {}

    @contextlib.contextmanager
    def stage(self, name):
        metrics.reset_peak_rss()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stages[name] = self.stages.get(name, 0.0) + time.perf_counter() - start
            self.peaks[name] = max(self.peaks.get(name, 0.0), metrics.peak_rss_gib())
