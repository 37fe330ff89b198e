"""The host symbols a package's code uses, read from its source with ast (tests/nodes/test_host_contract.py).

A use is (host module, name): `name` is the first attribute below the module, or below a module that a
host module re-exports under another name (`comfy_api.latest.io` is `comfy_api.latest._io`), joined to
that alias: ("comfy_api.latest", "io.Schema"). Found through every form a module is bound in:

    import comfy.sd                    comfy.sd.CLIP(...)          -> ("comfy.sd", "CLIP")
    import comfy.sampler_helpers as h  h.convert_cond(...)         -> ("comfy.sampler_helpers", "convert_cond")
    from comfy.utils import f          (the import itself)         -> ("comfy.utils", "f")
    from comfy.taesd import taesd      taesd.Block                 -> ("comfy.taesd.taesd", "Block")
    server = sys.modules.get("server") getattr(server, "PromptServer") -> ("server", "PromptServer")

at module level or inside a function (a function's own import, argument or assignment of a name
shadows the module's for that function). Which host modules exist, and whether a dotted name is a
module, is read from the running host without importing anything the pack does not import itself.
"""

from __future__ import annotations

import ast
import importlib
import importlib.machinery
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType


def host_roots(comfy_dir: Path) -> set[str]:
    """The host's top-level module names: every .py file (but main.py) and every folder holding Python
    files in its source tree (comfy, comfy_api, comfy_extras, folder_paths, server, execution, nodes, ...)."""
    names = {path.stem for path in comfy_dir.glob("*.py")} - {"main"}
    return names | {path.name for path in comfy_dir.iterdir() if path.is_dir() and any(path.glob("*.py"))}


def is_module(name: str) -> bool:
    """Whether `name` is a module: imported already, or a file or package on the import path (found
    without importing it or its packages)."""
    if isinstance(sys.modules.get(name), ModuleType):
        return True
    parts = name.split(".")
    try:
        spec = importlib.machinery.PathFinder.find_spec(parts[0])
        for depth in range(2, len(parts) + 1):
            if spec is None or not spec.submodule_search_locations:
                return False
            spec = importlib.machinery.PathFinder.find_spec(".".join(parts[:depth]),
                                                           list(spec.submodule_search_locations))
    except (ImportError, ValueError):
        return False
    return spec is not None


@dataclass(frozen=True)
class _Module:
    """A name bound to a host module (`alias`: a module the host re-exports under another name, whose
    attributes are named "alias.attr" below `name`). `importable`: the pack imports it (not only reads
    sys.modules), so reading its attributes may import it."""

    name: str
    alias: str | None = None
    importable: bool = True


@dataclass
class Uses:
    """(module, name) -> the places ("nodes/x.py:12") that use it; modules read only from sys.modules."""

    places: dict = field(default_factory=dict)
    read_only_modules: set = field(default_factory=set)

    def add(self, module: str, name: str, where: str) -> None:
        self.places.setdefault((module, name), set()).add(where)


def _attribute(module: _Module, attr: str) -> _Module | None:
    """`module.attr` as a module binding, or None where it is a symbol."""
    if module.alias is None and is_module(f"{module.name}.{attr}"):
        return _Module(f"{module.name}.{attr}", importable=module.importable)
    if module.alias is None and module.importable:
        try:
            value = getattr(importlib.import_module(module.name), attr, None)
        except ImportError:
            value = None
        if isinstance(value, ModuleType):
            return _Module(module.name, alias=attr)
    return None


def _symbol(module: _Module, attr: str) -> tuple[str, str]:
    return module.name, attr if module.alias is None else f"{module.alias}.{attr}"


def _sys_modules_lookup(node: ast.AST) -> str | None:
    """"x" for sys.modules.get("x") or sys.modules["x"]."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" and node.args:
        target, key = node.func.value, node.args[0]
    elif isinstance(node, ast.Subscript):
        target, key = node.value, node.slice
    else:
        return None
    is_sys_modules = isinstance(target, ast.Attribute) and target.attr == "modules" and \
        isinstance(target.value, ast.Name) and target.value.id == "sys"
    return key.value if is_sys_modules and isinstance(key, ast.Constant) and isinstance(key.value, str) else None


_SCOPES = (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


def _own_nodes(scope: ast.AST):
    """The nodes of `scope` outside the functions (and lambdas) nested in it."""
    stack = list(ast.iter_child_nodes(scope))
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, _SCOPES):
            stack.extend(ast.iter_child_nodes(node))


class _Reader:
    def __init__(self, roots: set[str], uses: Uses, where: str):
        self.roots, self.uses, self.where = roots, uses, where

    def _at(self, node: ast.AST) -> str:
        return f"{self.where}:{node.lineno}"

    def bindings(self, scope: ast.AST) -> dict:
        """name -> _Module or None (a local that is no host module) for the names `scope` binds."""
        bound: dict = {}
        if not isinstance(scope, ast.Module):
            args = scope.args
            for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
                if arg is not None:
                    bound[arg.arg] = None
        for node in _own_nodes(scope):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] in self.roots:
                        bound[alias.asname or alias.name.split(".")[0]] = _Module(
                            alias.name if alias.asname else alias.name.split(".")[0])
                    else:
                        bound[alias.asname or alias.name.split(".")[0]] = None
            elif isinstance(node, ast.ImportFrom):
                host = node.level == 0 and node.module and node.module.split(".")[0] in self.roots
                for alias in node.names:
                    local = alias.asname or alias.name
                    bound[local] = None
                    if host:
                        module = _attribute(_Module(node.module), alias.name)
                        if module is None:
                            self.uses.add(node.module, alias.name, self._at(node))
                        bound[local] = module
            elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                    and (_sys_modules_lookup(node.value) or "").split(".")[0] in self.roots:
                name = _sys_modules_lookup(node.value)
                self.uses.read_only_modules.add(name)
                bound[node.targets[0].id] = _Module(name, importable=False)
            elif not isinstance(scope, ast.Module) and isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                bound.setdefault(node.id, None)
        return bound

    def read(self, scope: ast.AST, outer: list[dict]) -> None:
        chain = [self.bindings(scope), *outer]
        for node in _own_nodes(scope):
            if isinstance(node, _SCOPES):
                self.read(node, chain)
            elif isinstance(node, ast.Attribute):  # read, set or deleted
                self._attribute_chain(node, chain)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr" \
                    and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
                self._attribute_chain(node, chain)

    def _lookup(self, name: str, chain: list[dict]) -> _Module | None:
        for bound in chain:
            if name in bound:
                return bound[name]
        return None

    def _parts(self, node: ast.AST) -> tuple[str, list[str]] | None:
        """("comfy", ["sd", "CLIP"]) for comfy.sd.CLIP or getattr(getattr(comfy, "sd"), "CLIP")."""
        attrs = []
        while True:
            if isinstance(node, ast.Attribute):
                attrs.append(node.attr)
                node = node.value
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr" \
                    and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) \
                    and isinstance(node.args[1].value, str):
                attrs.append(node.args[1].value)
                node = node.args[0]
            elif isinstance(node, ast.Name):
                return node.id, attrs[::-1]
            else:
                return None

    def _attribute_chain(self, node: ast.AST, chain: list[dict]) -> None:
        parts = self._parts(node)
        if parts is None:
            return
        module = self._lookup(parts[0], chain)
        for attr in parts[1] if module is not None else []:
            inner = _attribute(module, attr)
            if inner is None:
                self.uses.add(*_symbol(module, attr), self._at(node))
                return
            module = inner


def host_uses(package_dir: Path, roots: set[str], relative_to: Path | None = None) -> Uses:
    """Every host symbol the .py files under `package_dir` (all of them, recursively) use."""
    uses = Uses()
    for path in sorted(package_dir.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        _Reader(roots, uses, str(path.relative_to(relative_to or package_dir.parent))).read(tree, [])
    return uses
