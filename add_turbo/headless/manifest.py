"""A batch's record on disk: DIR/manifest.jsonl, a header line with the job key, then one line per
finished item (done or failed). Only the driver writes it, so each item lands exactly once.

A line is appended with one write and flushed to disk before the next item is taken, so a crash or
Ctrl-C leaves whole lines behind, at most a torn last one, which the next run drops (rewriting the
file through a temporary file and a rename). Images are written the same way: a temporary file in
the folder, then a rename, so a file with an image's name is always a whole image.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .workflow import WorkflowError

NAME = "manifest.jsonl"


class ManifestMismatch(WorkflowError):
    """The folder holds another job's manifest."""


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(partial, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    except BaseException:  # Ctrl-C or a full disk mid-write: no partial file left behind
        partial.unlink(missing_ok=True)
        raise


class Manifest:
    """DIR/manifest.jsonl of the job `key`: `finished` maps item index -> its line (a dict).

    Raises (on open):
        ManifestMismatch: DIR/manifest.jsonl belongs to another job.
    """

    def __init__(self, folder: Path, key: str, header: dict):
        self.path = Path(folder) / NAME
        self.key = key
        self.finished: dict[int, dict] = {}
        folder.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._read(header)
        else:
            write_atomic(self.path, (json.dumps({"job": key, **header}) + "\n").encode())
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)

    def _read(self, header: dict) -> None:
        text = self.path.read_text(encoding="utf-8", errors="replace")
        lines = text.splitlines(keepends=True)
        try:
            first = json.loads(lines[0]) if lines else {}
        except ValueError:
            first = {}
        if first.get("job") != self.key:
            raise ManifestMismatch(
                f"{self.path} belongs to another job (job key {first.get('job')!r}, this one {self.key!r}: another "
                "workflow, --set, --sweep or --prompts); pass another --out, or delete that folder's manifest to "
                "start over there")
        whole = [lines[0]]
        for line in lines[1:]:
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line torn by a crash: that item is rendered again
            if line.endswith("\n") and isinstance(entry, dict) and isinstance(entry.get("index"), int) \
                    and entry.get("status") in ("done", "failed"):
                self.finished[entry["index"]] = entry
                whole.append(line)
        if len(whole) != len(lines):
            write_atomic(self.path, "".join(whole).encode())
        for stale in self.path.parent.glob(".*.partial"):  # left by a process killed mid-write
            stale.unlink(missing_ok=True)

    def record(self, entry: dict) -> None:
        """Append one item's line (one write, then fsync) and count it as finished."""
        os.write(self._fd, (json.dumps(entry) + "\n").encode())
        os.fsync(self._fd)
        self.finished[entry["index"]] = entry

    def close(self) -> None:
        os.close(self._fd)
