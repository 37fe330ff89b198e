"""Test models linked into the host's models/ folders for a while, and unlinked afterwards."""

import contextlib
import os

from devkit import host


@contextlib.contextmanager
def linked_into_models():
    """Yields place(src, folder) -> file name: a symlink to `src` in models/<folder> of the host's base
    directory. Links made here are removed on exit, so other tests see the folders as before."""
    placed = []

    def place(src, folder):
        dst = host.BASE_DIR / "models" / folder / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not os.path.lexists(dst):
            os.symlink(src, dst)
            placed.append(dst)
        return dst.name

    try:
        yield place
    finally:
        for dst in placed:
            dst.unlink(missing_ok=True)
