"""What the GPU bench gathers and its report reads: each model family's loaded variants and figures
(`Family`, `Runner`), and the run as the report sees it (`BenchRun`). The harness (bench/harness.py)
fills them in; the report (bench/report.py) renders them; neither imports the other's module for it."""

from __future__ import annotations

import argparse
import collections
from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class Runner:
    """A loaded variant: how to make its images and which exact-path image they are compared with."""

    run: object  # run(prompt, batch=1, keep=False, sync=True) -> Stages
    decoder: str  # "full" or "taesd": which exact-path image it is compared with
    mode: str  # "txt2img" or "refine"
    load_s: float
    note: str


@dataclass
class Family:
    """One model family in this run: its models, loaded variants and every figure measured so far."""

    name: str
    ckpt: str
    pipe: object
    runners: dict = field(default_factory=dict)
    totals: dict = field(default_factory=lambda: collections.defaultdict(list))  # variant -> [end to end s]
    stages: dict = field(default_factory=lambda: collections.defaultdict(list))  # variant -> [{stage: s}]
    first: dict = field(default_factory=dict)  # variant -> s of its first image (compiles, graph records)
    diffs: dict = field(default_factory=dict)  # variant -> (max abs, PSNR dB)
    sweep: dict = field(default_factory=dict)  # (variant, batch) -> [s per batch]
    starts: dict = field(default_factory=dict)  # variant -> second start figures
    engine: dict = field(default_factory=dict)  # variant -> engine status
    notes: dict = field(default_factory=lambda: collections.defaultdict(list))  # variant or "" -> [text]
    references: dict = field(default_factory=dict)  # (mode, decoder) -> exact path's image
    paid: set = field(default_factory=set)  # one-time costs already spent (COSTS_S keys)
    dropped: set = field(default_factory=set)  # variants that failed or were skipped


class Elapsed(Protocol):
    def elapsed(self) -> float: ...


class BenchRun(Protocol):
    """The run as the report reads it (harness.Bench is one): options, time spent, families, sections' log."""

    args: argparse.Namespace
    budget: Elapsed
    families: dict[str, Family]
    log: list[str]
