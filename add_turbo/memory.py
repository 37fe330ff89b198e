"""Memory as a figure: what this machine has available, counting a cgroup's limit, and what a
checkpoint's parts weigh, so that a load that will not fit is refused before it starts.

The figures are read, never guessed: /proc/meminfo's MemAvailable (free memory plus the page cache the
kernel can drop), less what a cgroup (v2 memory.max, or v1 memory.limit_in_bytes) leaves to this
process's group, and at most ADD_TURBO_MEMORY_LIMIT when set (a cap the user gives the pack, e.g.
"12G", to keep room for other programs).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

GIB = 2**30
LIMIT_ENV = "ADD_TURBO_MEMORY_LIMIT"
# Key prefixes of each part in the single-file layout (SD 2.x and SDXL).
PART_PREFIXES = {"unet": ("model.diffusion_model.",), "vae": ("first_stage_model.",),
                 "text": ("cond_stage_model.", "conditioner.")}
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_size(text: str) -> int:
    """Bytes of "12G", "512M", "1.5G" or a plain number of bytes. Raises ValueError with the forms allowed."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if not match:
        raise ValueError(f"{text!r} is not a size: write bytes, or a number with K, M, G or T (e.g. 12G)")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def _meminfo_available(meminfo: Path) -> int | None:
    try:
        text = meminfo.read_text()
    except OSError:
        return None
    found = re.search(r"^MemAvailable:\s+(\d+) kB", text, re.MULTILINE)
    return int(found.group(1)) * 1024 if found else None


def _cgroup_headroom(root: Path) -> int | None:
    """What the cgroup's limit leaves (limit - usage), or None where no limit is set."""
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            limit, usage = (root / limit_file).read_text().strip(), (root / usage_file).read_text().strip()
        except OSError:
            continue
        if limit == "max" or not limit.isdigit() or int(limit) >= 2**60:  # v1 says "no limit" with a huge number
            return None
        return max(int(limit) - int(usage), 0)
    return None


def available_bytes(meminfo: str | os.PathLike = "/proc/meminfo",
                    cgroup_root: str | os.PathLike = "/sys/fs/cgroup") -> int | None:
    """The memory a new load may take now: the least of MemAvailable, the cgroup's headroom and
    ADD_TURBO_MEMORY_LIMIT. None where none of them can be read (then nothing is refused)."""
    figures = [f for f in (_meminfo_available(Path(meminfo)), _cgroup_headroom(Path(cgroup_root))) if f is not None]
    if os.environ.get(LIMIT_ENV):
        figures.append(parse_size(os.environ[LIMIT_ENV]))
    return min(figures) if figures else None


def parameter_counts(header: dict) -> dict[str, int]:
    """Parameters of each part ("unet", "text", "vae") of a header {name: (shape, dtype)} in the
    single-file key layout; keys of no known part are left out."""
    counts = dict.fromkeys(PART_PREFIXES, 0)
    for name, (shape, _) in header.items():
        part = next((p for p, prefixes in PART_PREFIXES.items() if name.startswith(prefixes)), None)
        if part is not None:
            size = 1
            for n in shape:
                size *= n
            counts[part] += size
    return counts


class NotEnoughMemory(MemoryError):
    """A load refused before it started: the message gives the figures and what to do."""


def refuse_if_short(what: str, need: int, available: int | None, fixes: str) -> None:
    """Raise NotEnoughMemory naming `what`, both figures in GiB and `fixes` when `need` > `available`."""
    if available is not None and need > available:
        raise NotEnoughMemory(f"{what} needs about {need / GIB:.2f} GiB of memory and {available / GIB:.2f} GiB is "
                              f"available (counting the cgroup's limit and {LIMIT_ENV}, where set): {fixes}. "
                              f"Nothing was loaded")
