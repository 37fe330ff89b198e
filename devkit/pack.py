"""The pack's own modules as the in-process host imported them (from custom_nodes/).

The pack's `nodes/` package shares its name with ComfyUI's `nodes` module, so `import nodes` gives the
host's. The host imports the pack as a package named after its folder in custom_nodes/ (build_host.sh
links the repository there as `add-turbo`); its modules are that package's submodules:

    precision = pack_module("nodes.precision")      # <pack package>.nodes.precision
    engine = pack_module("nodes.engine")

Paths are relative to the pack, so a module that moves is a one-word change at its users.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
# The pack's folder in the host's custom_nodes/ (scripts/build_host.sh).
FOLDER = "add-turbo"


def _is_pack(module: ModuleType | None) -> bool:
    file = getattr(module, "__file__", None)
    return bool(file) and Path(file).resolve() == REPO / "__init__.py"


def pack_package() -> str | None:
    """The package name the host gave the pack, or None where no host in this process loaded it.

    ComfyUI names a custom node folder's package by its path, dots made `_x_` (nodes.load_custom_node);
    that name is tried first, then any imported module whose file is the pack's __init__.py (a host
    that names it otherwise). Found by file, never by a suffix of a module's name.
    """
    if "folder_paths" in sys.modules:
        for folder in sys.modules["folder_paths"].get_folder_paths("custom_nodes"):
            name = os.path.join(folder, FOLDER).replace(".", "_x_")
            if _is_pack(sys.modules.get(name)):
                return name
    return next((name for name, module in list(sys.modules.items()) if _is_pack(module)), None)


def pack_module(path: str, *, missing_ok: bool = False) -> ModuleType | None:
    """The module `path` (dotted, relative to the pack: "nodes.precision") as the host imported it.

    Imported now if the host has not yet. Raises LookupError when no host in this process loaded the
    pack (devkit.host.init_in_process() first), or returns None with `missing_ok`.
    """
    package = pack_package()
    if package is None:
        if missing_ok:
            return None
        raise LookupError(f"the pack is not loaded in this process: no {path!r} (devkit.host.init_in_process() first)")
    return importlib.import_module(f"{package}.{path}")
