"""Project rules that can break silently: layering, import side effects, registry metadata, lint."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[2]
COMFYUI = {"comfy", "comfy_api", "comfy_extras", "folder_paths", "server", "nodes", "execution", "latent_preview",
           "node_helpers"}  # the host's top-level modules (`nodes` and `server` imported absolutely are ComfyUI's)
NETWORK = {"socket", "ssl", "urllib", "urllib3", "http", "aiohttp", "websocket", "websockets", "requests", "httpx"}
# What the repository's modules import by absolute name; anything else absolute (ComfyUI's nodes, torch...) is
# outside it. The pack's own modules (add_turbo/, nodes/) import each other relatively.
ABSOLUTE_ROOTS = {"add_turbo", "bench", "devkit", "scripts", "tests"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _core_and_headless() -> tuple[list[Path], list[Path]]:
    """add_turbo/'s core (pure torch) and its headless side (add_turbo/headless/, with the entry point
    add_turbo/__main__.py)."""
    headless, core = [], []
    for path in sorted((REPO / "add_turbo").rglob("*.py")):
        rel = path.relative_to(REPO / "add_turbo")
        (headless if rel.parts[0] in ("headless", "__main__.py") else core).append(path)
    return core, headless


def test_the_core_imports_neither_the_headless_side_nor_comfyui_ray_or_the_network():
    """Function-level imports included: the core runs and is tested on torch alone."""
    core, headless = _core_and_headless()
    assert len(core) > 10 and len(headless) > 8  # the split sees both sides
    known = {_module_name(p) for p in _repo_modules()}
    core_names = {_module_name(p) for p in core}
    for path in core:
        outside = _imported_modules(path, known) - core_names
        assert not outside, (path, outside)  # nothing of add_turbo.headless, nodes/ or the development kit
        assert not _imports(path) & (COMFYUI | NETWORK | {"ray"}), path
    assert "add_turbo.refine" in _imported_modules(REPO / "add_turbo" / "inputs.py", known)  # the scan sees imports


def test_the_headless_side_never_imports_the_nodes_or_comfyui():
    """It drives ComfyUI from outside, over HTTP: ComfyUI's modules and the pack's nodes/ stay out of it."""
    _, headless = _core_and_headless()
    known = {_module_name(p) for p in _repo_modules()}
    for path in headless:
        assert not {m for m in _imported_modules(path, known) if m.split(".")[0] == "nodes"}, path
        assert not _imports(path) & COMFYUI, path
    assert "add_turbo.headless.job" in _imported_modules(REPO / "add_turbo" / "headless" / "cli.py", known)


def test_the_pack_never_imports_the_development_kit():
    for folder in ("add_turbo", "nodes"):
        for path in (REPO / folder).rglob("*.py"):
            assert not _imports(path) & {"devkit", "tests", "bench", "scripts"}, path


def _sys_path_changes(path: Path) -> list[str]:
    text = path.read_text()
    changes = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            changed = ast.unparse(node.func.value) == "sys.path"
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            changed = any(ast.unparse(t).startswith("sys.path") for t in targets)
        else:
            changed = False
        if changed:
            changes.append(ast.get_source_segment(text, node))
    return changes


def test_kit_users_run_from_the_repository_root():
    """Tests, benches and scripts run as modules from the repository root (python -m pytest,
    python -m bench.speed): none puts the repository on sys.path (the host's ComfyUI may go there)."""
    for folder in ("bench", "scripts", "tests", "devkit"):
        for path in (REPO / folder).rglob("*.py"):
            for change in _sys_path_changes(path):
                assert "__file__" not in change and "REPO" not in change, (path, change)


def test_core_imports_alone_in_a_clean_interpreter():
    code = ("import sys, add_turbo.schedules, add_turbo.samplers, add_turbo.noise, add_turbo.checkpoints;"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('comfy', 'folder_paths', 'nodes', 'aiohttp')"
            " or m.startswith('add_turbo.headless')];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_pack_init_has_no_import_side_effects():
    tree = ast.parse((REPO / "__init__.py").read_text())
    top_imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not top_imports, "the pack's __init__ must import nothing at module level"


def test_registry_metadata():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    project, comfy = meta["project"], meta["tool"]["comfy"]
    assert re.fullmatch(r"[A-Za-z0-9_.-]{1,99}", project["name"]) and "comfyui" not in project["name"].lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert project["description"] and project["license"]
    assert not any(dep.split("=")[0].split(">")[0].strip() in ("torch", "torchvision") for dep in project["dependencies"])
    assert comfy["PublisherId"] and comfy["DisplayName"]
    assert re.fullmatch(r">=\d+\.\d+\.\d+", comfy["requires-comfyui"])
    kinds = {c.split(" :: ")[0] for c in project["classifiers"]}
    assert {"Operating System", "Environment"} <= kinds  # the registry's OS and accelerator filters
    requirements = (REPO / "requirements.txt").read_text().splitlines()
    assert not any(line.strip().startswith("torch") for line in requirements), "never install torch over the user's"


def test_only_the_batch_on_ray_imports_ray():
    """Ray is an optional extra for `batch --ray`: the nodes and the rest of the CLI never import it."""
    importers = sorted(str(path.relative_to(REPO)) for path in [*REPO.glob("nodes/**/*.py"), *REPO.glob("add_turbo/**/*.py")]
                       if re.search(r"^\s*(import ray|from ray\b)", path.read_text(), re.MULTILINE))
    assert importers == ["add_turbo/headless/ray_batch.py"]


def test_no_eval_exec_or_print_in_shipped_code():
    for folder in ("add_turbo", "nodes"):
        for path in (REPO / folder).rglob("*.py"):
            calls = {n.func.id for n in ast.walk(ast.parse(path.read_text()))
                     if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
            cli_output = path.relative_to(REPO).as_posix() in ("add_turbo/headless/cli.py", "add_turbo/headless/job.py")
            banned = {"eval", "exec"} | (set() if cli_output else {"print"})  # the CLI's output is print
            assert not calls & banned, path


def test_ruff_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflow_conversion_defaults_missing_optional_widgets_and_refuses_missing_required():
    from add_turbo.headless.workflow import WorkflowError, ui_to_api

    info = {"N": {"input": {"required": {"a": ["INT", {"control_after_generate": True}]}, "optional": {"b": [["x", "y"]]}},
                  "input_order": {"required": ["a"], "optional": ["b"]}, "output": [], "output_name": []}}
    node = {"id": 1, "type": "N", "inputs": [], "widgets_values": [5, "fixed"]}
    assert ui_to_api({"nodes": [node], "links": []}, info)["1"]["inputs"] == {"a": 5}
    node["widgets_values"] = [5, "fixed", "y"]
    assert ui_to_api({"nodes": [node], "links": []}, info)["1"]["inputs"] == {"a": 5, "b": "y"}
    node["widgets_values"] = []
    import pytest

    with pytest.raises(WorkflowError, match="no value for widget 'a'"):
        ui_to_api({"nodes": [node], "links": []}, info)


def test_set_widget_value_is_what_conversion_reads_back():
    from add_turbo.headless.workflow import set_widget_value, ui_to_api

    info = {"N": {"input": {"required": {"a": ["INT", {"control_after_generate": True}], "x": ["LATENT"]},
                            "optional": {"b": ["COMBO", {"options": ["p", "q"]}], "c": ["FLOAT", {"default": 0.5}]}},
                  "input_order": {"required": ["a", "x"], "optional": ["b", "c"]}, "output": ["LATENT"],
                  "output_name": ["LATENT"]}}
    source = {"id": 1, "type": "N", "inputs": [], "outputs": [{"name": "LATENT", "links": [9]}],
              "widgets_values": [1, "fixed"]}
    node = {"id": 2, "type": "N", "inputs": [{"name": "a", "link": 9}], "widgets_values": [5, "fixed"]}
    workflow = {"nodes": [source, node], "links": [[9, 1, 0, 2, 0, "INT"]]}
    assert set_widget_value(workflow, "2", "c", 0.75, info)  # b, before it, gets its default
    assert set_widget_value(workflow, "2", "a", 7, info)  # the literal replaces the link
    assert node["widgets_values"] == [7, "fixed", "p", 0.75] and workflow["links"] == [] and source["outputs"][0]["links"] == []
    assert ui_to_api(workflow, info)["2"]["inputs"] == {"a": 7, "b": "p", "c": 0.75}
    assert not set_widget_value(workflow, "2", "x", 1, info) and not set_widget_value(workflow, "3", "a", 1, info)


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: Path, known: set[str]) -> set[str]:
    """The modules of `known` that `path` imports, at any depth of its code (function-level imports
    count), each with the packages it must initialise on the way (those not enclosing `path` itself).
    Relative imports are resolved (`...add_turbo` from nodes/engine/ is add_turbo); an absolute import
    outside ABSOLUTE_ROOTS is not the repository's (`import nodes` is ComfyUI's)."""
    name = _module_name(path)
    package = (name if path.name == "__init__.py" else name.rpartition(".")[0]).split(".")
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names if alias.name.split(".")[0] in ABSOLUTE_ROOTS}
        elif isinstance(node, ast.ImportFrom):
            if not node.level and (node.module or "").split(".")[0] not in ABSOLUTE_ROOTS:
                continue
            base = ".".join(package[:len(package) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module) if p)
            targets |= {f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module
                        for alias in node.names}
    enclosing = {name.rsplit(".", k)[0] for k in range(name.count(".") + 1)}
    found = set()
    for target in targets & known:
        parts = target.split(".")
        found |= {".".join(parts[:k]) for k in range(1, len(parts) + 1)} - enclosing
    return found & known


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module, or of one that imports itself (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def _repo_modules() -> list[Path]:
    """Every module of the pack (add_turbo/, core and headless; nodes/) and of the development side that
    is imported by name (bench/, devkit/, scripts/)."""
    return sorted(p for folder in ("add_turbo", "nodes", "bench", "devkit", "scripts") for p in (REPO / folder).rglob("*.py"))


def test_no_module_in_the_repository_takes_part_in_an_import_circle():
    """add_turbo/, nodes/, bench/, devkit/ and scripts/ taken together, function-level imports included
    (a circle held together by a late import is still a circle), relative imports resolved."""
    paths = _repo_modules()
    known = {_module_name(p) for p in paths}
    graph = {_module_name(p): _imported_modules(p, known) for p in paths}
    assert graph["nodes.sampling"] >= {"nodes.latent_sampling", "nodes.queue_batching", "add_turbo.samplers"}  # the scan sees imports
    assert "nodes.engine" in graph["nodes.latent_sampling"]
    assert "add_turbo.acceleration.cuda_graphs" in graph["nodes.engine.direct"]  # three dots: up to the pack
    assert "add_turbo.headless.cli" in graph["add_turbo.__main__"]
    assert {"bench.gpu_plan", "devkit.host"} <= graph["bench.report"]
    assert "nodes" not in graph["bench.speed"]  # its `import nodes` is ComfyUI's
    assert not _circles(graph)
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the check can fail


MAX_LINES = 400
MAX_README_WORDS = 2000


def test_modules_stay_short():
    """Each Python module of the pack, the development kit, the benches and the tests, and each script of
    the editor, within MAX_LINES lines."""
    paths = [p for folder in ("add_turbo", "nodes", "bench", "devkit", "tests") for p in (REPO / folder).rglob("*.py")]
    paths += (REPO / "js").rglob("*.js")
    long = {str(p.relative_to(REPO)): n for p in sorted(paths) if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"over {MAX_LINES} lines, split them by concern: {long}"


def test_readme_stays_short():
    """Words counted as `wc -w` counts them: runs of characters between ASCII whitespace."""
    words = len((REPO / "README.md").read_bytes().split())
    assert words < MAX_README_WORDS, f"README.md has {words} words: move the details into docs/"
