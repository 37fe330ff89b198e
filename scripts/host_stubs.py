"""Write import-only stand-ins for torchvision and torchaudio into a folder (argv[1]).

No torchvision / torchaudio build exists for the CPU torch the development host uses, and ComfyUI
imports both at module level for model families this pack never touches (Cascade, Cosmos, SAM3,
audio). Each stand-in module resolves its submodules and hands out, for any other name, an object
that raises only when it is used, so the host starts and its SD / SDXL paths never notice. No
package metadata is written, so libraries that probe for torchvision (transformers) still see none.
"""

import sys
from pathlib import Path

MODULES = {
    "torchvision": ["ops", "io", "utils", "transforms", "transforms.functional", "transforms.v2",
                    "transforms.v2.functional", "models", "models.optical_flow"],
    "torchaudio": ["functional", "transforms", "io"],
}

STUB = '''"""Import-only stand-in (the development host has no {top} build for its CPU torch)."""
import importlib


class _Missing:
    """Any name of the real package: fails only when it is used."""

    def __init__(self, name):
        self._name = name

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{{self._name}} needs {top}, which this host does not have")

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Missing(f"{{self._name}}.{{attr}}")

    def __mro_entries__(self, bases):
        return (object,)


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    if name in {children!r}:
        return importlib.import_module(f"{{__name__}}.{{name}}")
    return _Missing(f"{{__name__}}.{{name}}")
'''


def write(root: Path) -> None:
    for top, subs in MODULES.items():
        names = [top] + [f"{top}.{s}" for s in subs]
        for name in names:
            parts = name.split(".")
            children = sorted({n.split(".")[len(parts)] for n in names if n.startswith(name + ".")})
            folder = root.joinpath(*parts)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "__init__.py").write_text(STUB.format(top=top, children=children))


if __name__ == "__main__":
    write(Path(sys.argv[1]))
