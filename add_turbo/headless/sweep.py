"""What a batch renders: the items of a sweep (the product of `--sweep NODE.INPUT=SPEC` entries and a
prompt list), each with a stable index, its input overrides and a file name; and the job key that ties
an output folder to one job. Plain Python: no ComfyUI, no Ray.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path

from .workflow import WorkflowError

RANGE = re.compile(r"^(-?\d+):(-?\d+)$")


class SpecError(WorkflowError):
    """A sweep or prompt list that cannot be run as written (refused before anything runs)."""


@dataclass(frozen=True)
class Axis:
    """One swept input: `target` is NODE.INPUT as written (resolved against the workflow later)."""

    target: str  # "" for the prompt list's default: the text of the CLIP Text Encode that feeds the sampler
    values: tuple

    @property
    def input_name(self) -> str:
        return self.target.rpartition(".")[2] or "text"


@dataclass(frozen=True)
class Item:
    """One image to render: `overrides` pairs each axis's target with this item's value."""

    index: int
    overrides: tuple  # ((target, value), ...)
    stem: str  # file name without extension, e.g. 000042_seed-42


def _value(text: str):
    """JSON where it parses (numbers, true/false), else the text itself (as run's --set reads values)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_sweep(entry: str) -> Axis:
    """`NODE.INPUT=A:B` (integers A..B-1) or `NODE.INPUT=v1,v2,...` -> Axis.

    Raises:
        SpecError: no NODE.INPUT=, an empty range, or an empty value list.
    """
    target, sep, spec = entry.partition("=")
    node, dot, name = target.rpartition(".")
    if not sep or not dot or not node or not name or not spec:
        raise SpecError(f"--sweep {entry!r}: write NODE.INPUT=A:B (integers A to B-1) or NODE.INPUT=v1,v2,..., "
                        "e.g. --sweep seed.seed=0:100 or --sweep ADDTurboSample.steps=1,2,4")
    if match := RANGE.match(spec.strip()):
        start, stop = int(match[1]), int(match[2])
        if stop <= start:
            raise SpecError(f"--sweep {entry!r}: the range {start}:{stop} is empty (the end is exclusive: "
                            f"{start}:{start + 1} is the one value {start})")
        return Axis(target, tuple(range(start, stop)))
    values = tuple(_value(v.strip()) for v in spec.split(",") if v.strip())
    if not values:
        raise SpecError(f"--sweep {entry!r}: no values; list them as v1,v2,...")
    return Axis(target, values)


def read_prompts(path: str | Path) -> tuple[str, ...]:
    """The non-empty lines of a prompt file, stripped.

    Raises:
        SpecError: the file cannot be read or holds no prompt.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise SpecError(f"--prompts {path}: cannot read it ({error})") from error
    prompts = tuple(line.strip() for line in lines if line.strip())
    if not prompts:
        raise SpecError(f"--prompts {path}: no prompts in it (one per line)")
    return prompts


def slug(value, limit: int = 32) -> str:
    """A file-name-safe short form of a value: 42 -> 42, 'a red fox, snow' -> a-red-fox-snow."""
    text = re.sub(r"[^A-Za-z0-9.+]+", "-", str(value)).strip("-.").lower()
    return text[:limit].rstrip("-.") or "x"


def items(axes: list[Axis]) -> list[Item]:
    """Every combination of the axes' values (the first axis outermost), indexed from 0."""
    width = max(6, len(str(max(0, _count(axes) - 1))))
    out = []
    for index, values in enumerate(itertools.product(*(axis.values for axis in axes))):
        overrides = tuple((axis.target, value) for axis, value in zip(axes, values, strict=True))
        stem = "_".join([f"{index:0{width}d}", *(f"{slug(axis.input_name, 16)}-{slug(v)}"
                                                  for axis, v in zip(axes, values, strict=True))])
        out.append(Item(index, overrides, stem))
    return out


def _count(axes: list[Axis]) -> int:
    count = 1
    for axis in axes:
        count *= len(axis.values)
    return count


def job_key(workflow: dict, sets: list[str], axes: list[Axis]) -> str:
    """A short hash of what decides the images: the workflow, the --set entries and the axes."""
    blob = json.dumps({"workflow": workflow, "set": list(sets),
                       "axes": [[axis.target, list(axis.values)] for axis in axes]}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
