"""The docs name the code as it is. Pure: the code is parsed with ast, nothing of it is imported.

What counts as a reference, in README.md and docs/*.md, outside fenced code blocks:

- a code span that is one dotted name (`precision.resolve`, `add_turbo.headless.job.Job`,
  `TurboVAE.decode`; a trailing argument list `(...)` is ignored) and is not a file name
  (`sd_turbo.safetensors`, `sweep.py`) nor another library's name (first part in EXTERNAL or the
  standard library: `torch.compile`, `comfy_api.latest`, `os._exit`). It is resolved
  - from the repository root when its first part is one of ROOTS (`add_turbo.noise`, `bench.gpu`);
  - from any package folder under add_turbo/ or nodes/ otherwise (`precision.resolve` is
    nodes/precision.py, `sweep.Item` add_turbo/headless/sweep.py, `host_api.text` nodes/host_api/text.py);
  - as a class of the pack when its first part is capitalised (`ADDTurboLoader.execute`).
  It resolves when the longest module prefix is a module file (or package) and what follows is
  nothing (a module), a top-level def, class or assignment in it, or Class.member (a def, nested
  class or class-level assignment in the class body). Names re-exported by an import do not count:
  name the module that defines them.
- a code span that is one path whose first folder is one of PATH_ROOTS (`nodes/loader.py`,
  `docs/examples/*.png`) or a package folder of the pack (`host_api/models`, `engine/gates`): it must
  exist, as written or with `.py` added (globs match at least one file); a bare module file name
  (`sweep.py`) must be the name of a file somewhere in the repository.

Both tests list every name that does not resolve, with the file and line that names it.
"""

import ast
import re
import sys
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

ROOTS = ("add_turbo", "nodes", "bench", "devkit", "scripts", "tests")
PATH_ROOTS = (*ROOTS, "js", "workflows", "docs", "locales", ".ci")
# Other libraries' top-level names that the docs write in dotted names. The standard library's count too, so
# `io.Schema` (the V3 API's io, as the nodes import it) is not taken for the pack's.
EXTERNAL = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "execution", "torch", "diffusers",
            "transformers", "safetensors", "openvino", "nncf", "optimum", "ray", "numpy", "PIL", "playwright", "pytest",
            "aiohttp", "comfy_cli", "huggingface_hub"} | set(sys.stdlib_module_names)
FILE_SUFFIXES = {"py", "md", "json", "jsonl", "safetensors", "sh", "png", "jpg", "txt", "toml", "js", "ckpt", "pt",
                 "pth", "bin", "pkl", "yaml", "yml", "gz", "zip", "log", "html", "css", "xml", "onnx"}

FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.MULTILINE | re.DOTALL)
SPAN = re.compile(r"`([^`]+)`")
DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")
PATH = re.compile(r"\.?[\w-]+(?:/[\w.*\[\]-]+)+/?")
MODULE_FILE = re.compile(r"[\w-]+\.py")


def code_spans():
    """(doc, line, text) for every inline code span outside fenced blocks."""
    for doc in DOCS:
        text = doc.read_text()
        # Blank out fenced blocks, keeping their newlines so that line numbers stay right.
        text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
        for match in SPAN.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            yield doc.relative_to(REPO), line, " ".join(match.group(1).split())


@cache
def package_dirs() -> tuple[Path, ...]:
    """add_turbo/ and nodes/ and every folder under them that holds Python code."""
    dirs = []
    for top in ("add_turbo", "nodes"):
        dirs += [REPO / top] + sorted(p for p in (REPO / top).rglob("*")
                                      if p.is_dir() and p.name != "__pycache__" and any(p.glob("*.py")))
    return tuple(dirs)


@cache
def module_tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _members(body) -> set[str]:
    """Names a module or class body defines: defs, classes, assignments (also inside top-level if/try)."""
    names = set()
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.If):
            names |= _members(node.body) | _members(node.orelse)
        elif isinstance(node, ast.Try):
            names |= _members(node.body) | _members(node.orelse) | _members(node.finalbody)
            for handler in node.handlers:
                names |= _members(handler.body)
    return names


def _class(body, name: str) -> ast.ClassDef | None:
    return next((n for n in body if isinstance(n, ast.ClassDef) and n.name == name), None)


def _defines(module: Path | None, rest: list[str]) -> bool:
    """Whether `rest` (nothing, a name, or Class.member) is defined in the module file (None: a folder)."""
    if not rest:
        return True
    if module is None or len(rest) > 2:
        return False
    body = module_tree(module).body
    if len(rest) == 1:
        return rest[0] in _members(body)
    found = _class(body, rest[0])
    return found is not None and rest[1] in _members(found.body)


def _module_file(base: Path, parts: list[str]) -> tuple[bool, Path | None]:
    """(is a module, its file): base/a/b.py, base/a/b/__init__.py, or a folder of Python code (no file)."""
    target = base.joinpath(*parts)
    if target.with_suffix(".py").is_file():
        return True, target.with_suffix(".py")
    if (target / "__init__.py").is_file():
        return True, target / "__init__.py"
    return target.is_dir() and any(target.rglob("*.py")), None


@cache
def pack_classes() -> dict[str, list[tuple[Path, ast.ClassDef]]]:
    classes = {}
    for top in ("add_turbo", "nodes", "bench", "devkit", "scripts"):
        for path in sorted((REPO / top).rglob("*.py")):
            for node in module_tree(path).body:
                if isinstance(node, ast.ClassDef):
                    classes.setdefault(node.name, []).append((path, node))
    return classes


def resolve(name: str) -> Path | None | bool:
    """The file a dotted name resolves to (a Path, or True for a folder), or None where it does not."""
    parts = name.split(".")
    if parts[0][0].isupper():
        for path, node in pack_classes().get(parts[0], []):
            if len(parts) == 1 or (len(parts) == 2 and parts[1] in _members(node.body)):
                return path
        return None
    bases = (REPO,) if parts[0] in ROOTS else package_dirs()
    for base in bases:
        for k in range(len(parts), 0, -1):
            is_module, module = _module_file(base, parts[:k])
            if is_module and _defines(module, parts[k:]):
                return module or True
    return None


def is_reference(text: str) -> bool:
    if not DOTTED.fullmatch(text):
        return False
    parts = text.split(".")
    if parts[-1].lower() in FILE_SUFFIXES:
        return False
    return parts[0] in ROOTS or parts[0] not in EXTERNAL


def dotted_references():
    for doc, line, text in code_spans():
        name = re.sub(r"\(.*\)$", "", text)
        if is_reference(name):
            yield doc, line, name


def _where(target) -> str:
    return "(a folder)" if target is True else str(target.relative_to(REPO))


def _report(kind: str, checked: list[str], unresolved: list[str], hint: str) -> None:
    print(f"\n{kind}: {len(checked)} checked")
    print("\n".join(checked))
    assert not unresolved, (f"{len(unresolved)} {kind} in the docs do not resolve ({hint}):\n" + "\n".join(unresolved))


def test_every_dotted_name_in_the_docs_is_defined_in_the_code():
    checked, unresolved = [], []
    for doc, line, name in dotted_references():
        target = resolve(name)
        if target is None:
            unresolved.append(f"  {doc}:{line}: `{name}`")
        else:
            checked.append(f"  {doc}:{line}: `{name}` -> {_where(target)}")
    assert checked, "no dotted name found: has the rule gone wrong?"
    _report("dotted names", checked, unresolved,
            "rename them to the current module.function; if one is another library's, add its first part to "
            "EXTERNAL in tests/core/test_docs.py")


def path_references():
    package_names = {p.name for p in package_dirs()}
    for doc, line, text in code_spans():
        if MODULE_FILE.fullmatch(text) or (PATH.fullmatch(text) and (text.split("/")[0] in PATH_ROOTS
                                                                      or text.split("/")[0] in package_names)):
            yield doc, line, text


def find_path(text: str) -> Path | None:
    if MODULE_FILE.fullmatch(text):  # a bare file name: anywhere in the repository's own folders
        found = [*REPO.glob(text), *(p for top in PATH_ROOTS for p in (REPO / top).rglob(text))]
        return min(found, default=None)
    relative = text.rstrip("/")
    bases = (REPO,) if relative.split("/")[0] in PATH_ROOTS else [p.parent for p in package_dirs()]
    for base in bases:
        if any(c in relative for c in "*[]"):
            match = next(iter(sorted(base.glob(relative))), None)
            if match:
                return match
            continue
        for candidate in (base / relative, base / f"{relative}.py"):
            if candidate.exists():
                return candidate
    return None


def test_every_repository_path_in_the_docs_exists():
    checked, unresolved = [], []
    for doc, line, text in path_references():
        target = find_path(text)
        if target is None:
            unresolved.append(f"  {doc}:{line}: `{text}`")
        else:
            checked.append(f"  {doc}:{line}: `{text}` -> {target.relative_to(REPO)}")
    assert checked, "no path found: has the rule gone wrong?"
    _report("paths", checked, unresolved, "the file or folder moved: write where it is now")


def test_the_rule_catches_a_name_that_no_longer_exists():
    """The check itself: a real name resolves, a removed one (queue_batching.sample) or another library's does not
    count or does not resolve."""
    assert resolve("add_turbo.noise") and resolve("ADDTurboLoader.execute")
    assert resolve("queue_batching.sample") is None and resolve("add_turbo.no_such_module") is None
    assert not is_reference("torch.compile") and not is_reference("sd_turbo.safetensors")
    assert is_reference("queue_batching.sample")
