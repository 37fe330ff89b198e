"""The benchmarks' model files made visible to the host's loaders: links under the host's models folder
to files built once in the bench cache."""

from __future__ import annotations

import os
from pathlib import Path

from devkit import host


def link_model(path: Path, folder: str) -> Path:
    """models/<folder>/<name of path> in the host, a link to `path` (an existing entry is kept)."""
    link = host.BASE_DIR / "models" / folder / path.name
    if not link.exists():
        os.symlink(path, link)
    return link


def link_taesd() -> None:
    """The TAESD / TAESDXL weights (built once) in the host's models/vae_approx, where the pack's loader reads them."""
    from devkit import turbo_models

    for src in turbo_models.build_taesd().glob("*.safetensors"):
        link_model(src, "vae_approx")
