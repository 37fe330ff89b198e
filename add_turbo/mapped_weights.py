"""Weights that stay on disk: tensors memory-mapped from a checkpoint, whose pages this process hands
back to the kernel while another engine serves (OpenVINO), and reads again from the file on their
next use. Nothing changes for the code that holds the tensors: they keep their values and addresses.

Linux only (/proc/self/smaps, madvise); elsewhere nothing is released and the figures are 0.
A mapping is released only while no page of it was written: the checkpoint's mapping is private, so a
page written in place (copy-on-write, smaps' "Anonymous") would revert to the file's bytes; such a
mapping is left as it is.
"""

from __future__ import annotations

import bisect
import ctypes
import ctypes.util
import functools
import gc
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

MADV_DONTNEED = 4  # Linux: drop the pages; a private file mapping refaults them from the file
SMAPS = Path("/proc/self/smaps")
HEADER = re.compile(r"^[0-9a-f]+-[0-9a-f]+ ")  # a region's first line: its address range


@dataclass(frozen=True)
class Mapping:
    """One mapped region of this process, as /proc/self/smaps lists it (sizes in bytes)."""

    start: int
    end: int
    path: str
    rss: int
    anonymous: int  # pages written in place (copy-on-write): no longer the file's


def mappings(smaps: Path = SMAPS) -> list[Mapping]:
    """This process's mapped regions, by start address (empty where there is no smaps file)."""
    try:
        lines = smaps.read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        if HEADER.match(line):
            parts = line.split(maxsplit=5)
            start, end = (int(part, 16) for part in parts[0].split("-"))
            found.append([start, end, parts[5].strip() if len(parts) > 5 else "", 0, 0])
        elif found and line.startswith(("Rss:", "Anonymous:")):
            found[-1][3 if line.startswith("Rss:") else 4] = int(line.split()[1]) * 1024
    found = [Mapping(*fields) for fields in found]
    return sorted(found, key=lambda m: m.start)


def file_mappings_of(tensors, smaps: Path = SMAPS) -> list[Mapping]:
    """The file mappings that hold the storage of any of `tensors` (each once, by start address)."""
    regions = [m for m in mappings(smaps) if m.path.startswith("/")]
    starts = [m.start for m in regions]
    held = {}
    for tensor in tensors:
        if tensor.device.type != "cpu" or tensor.is_meta:
            continue
        pointer = tensor.untyped_storage().data_ptr()
        index = bisect.bisect_right(starts, pointer) - 1
        if index >= 0 and pointer < regions[index].end:
            held[regions[index].start] = regions[index]
    return [held[start] for start in sorted(held)]


def resident_bytes(tensors) -> int:
    """Bytes of the file mappings behind `tensors` that are in this process's memory now (their RSS)."""
    return sum(m.rss for m in file_mappings_of(tensors))


@functools.cache
def _libc():
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    return libc


def release(tensors) -> int:
    """Hand back to the kernel the pages of the unwritten file mappings behind `tensors`: they are read
    from the file again where next used. Returns the bytes released (their RSS before)."""
    return _release(file_mappings_of(tensors))


def release_files_under(folder: Path) -> int:
    """The same for every file mapping of a file under `folder` (OpenVINO's IR weights and compiled
    blobs: a compiled model keeps its own copy of the weights, and the mapped file stays resident
    beside it). Returns the bytes released."""
    prefix = str(Path(folder).resolve()) + "/"
    return _release([m for m in mappings() if m.path.startswith(prefix)])


def _release(regions: list[Mapping]) -> int:
    released = 0
    for region in regions:
        if region.anonymous:
            log.debug("mapped_weights: %s has pages written in place: kept", region.path)
            continue
        if region.rss and _libc().madvise(region.start, region.end - region.start, MADV_DONTNEED) == 0:
            released += region.rss
    return released


def trim_heap() -> bool:
    """Give the C heap's free pages back to the kernel (glibc's malloc_trim): a conversion frees
    gigabytes that glibc would otherwise keep in this process. False where there is no glibc."""
    try:
        return bool(_libc().malloc_trim(0))
    except (AttributeError, OSError):
        return False


def parameters_of(module: torch.nn.Module) -> list[torch.Tensor]:
    """`module`'s parameters and buffers: the tensors to release or measure."""
    return [*module.parameters(), *module.buffers()]


def spill(module: torch.nn.Module, path: Path) -> int:
    """Make `module`'s parameters (those held in memory, contiguous, on the CPU) the memory mapping of a
    file of their values at `path`, written once (a later call checks the file's values against them),
    and free the copies they had: their pages can then be released and read again. The tensors keep
    their shapes, dtypes and values; the Parameter objects stay. Returns the bytes moved off the heap."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    params = [(n, p) for n, p in module.named_parameters() if p.device.type == "cpu" and p.is_contiguous()]
    mapped = {m.start: m for m in file_mappings_of([p for _, p in params])}
    held = [(n, p) for n, p in params if not _in_any(p, mapped.values())]
    if not held:  # moved before: a later conversion read them again
        release([p for _, p in params])
        return 0
    path = Path(path)
    written = not path.exists()
    if written:
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        save_file({n: p.detach() for n, p in held}, str(partial))
        partial.replace(path)
    moved = 0
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        stored = set(handle.keys())
        for name, param in held:
            if name not in stored:
                continue
            with torch.inference_mode(param.is_inference()):  # as the host made it (inference mode or not)
                tensor = handle.get_tensor(name)
            if tensor.shape != param.shape or tensor.dtype != param.dtype or (
                    not written and not torch.equal(tensor, param.detach())):
                continue  # not this module's values: it keeps its own copy
            param.data = tensor
            moved += tensor.nbytes
    gc.collect()
    trim_heap()
    release([p for _, p in held])  # pages the value check read
    return moved


def _in_any(tensor: torch.Tensor, regions) -> bool:
    pointer = tensor.untyped_storage().data_ptr()
    return any(r.start <= pointer < r.end for r in regions)
