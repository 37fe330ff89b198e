"""The editor in a real headless Chromium (Debian's package, driven by Playwright) against a real server,
once with the frontend the host ships ("bundled") and once with the newest frontend ("newest"): the pack's
extension loads, and every workflow opens with its values. The features have their own modules: test_live,
test_subgraphs, test_stream, test_labels (fixtures in conftest.py, helpers in helpers.py)."""

import json

import pytest

from devkit import host
from tests.browser.helpers import REPO

WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))


def test_editor_opens_with_the_extension_and_no_pack_errors(editor):
    assert editor.js("() => window.app.extensions.some(e => e.name === 'ADDTurbo.Live')")
    assert editor.js("() => ['ADDTurboLoader','ADDTurboScheduler','ADDTurboSampler','ADDTurboSample','ADDTurboRefine']"
                     ".every(t => !!window.LiteGraph.registered_node_types[t])")
    assert editor.pack_errors() == []


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_every_workflow_loads_with_no_missing_nodes_and_its_values(editor, frontend_server, path):
    workflow = json.loads(path.read_text())
    for node in workflow["nodes"]:  # no missing-model dialog left over the canvas for the next tests
        node.get("properties", {}).pop("models", None)  # (test_workflow_files checks the download links)
    editor.load_workflow(workflow)
    nodes = editor.js("""() => window.app.graph._nodes.map(n => ({id: String(n.id), type: n.type,
        registered: !!window.LiteGraph.registered_node_types[n.type], color: n.color,
        values: (n.widgets || []).filter(w => w.name !== 'live').map(w => w.value)}))""")
    assert len(nodes) == len(workflow["nodes"])
    assert all(n["registered"] for n in nodes), [n for n in nodes if not n["registered"]]
    by_id = {n["id"]: n for n in nodes}  # newer frontends use string ids
    for node in workflow["nodes"]:
        if node["type"].startswith("ADDTurbo"):
            shown = by_id[str(node["id"])]
            assert shown["values"][: len(node["widgets_values"])] == node["widgets_values"], node["type"]
            assert shown["color"] == "#4b2f73"
    editor.fit_view()
    editor.screenshot(f"editor_{host.HOST}_{frontend_server.frontend}_{path.stem}.png")
    assert editor.pack_errors() == []


def test_every_js_file_is_one_module_and_the_extension_registers_once(editor, frontend_server):
    """The editor imports every .js file under the pack's web directory as a module of its own, and the entry
    imports the others by relative URL: each file is fetched and run once (the same module instance for both),
    and only the entry registers anything, however often the files are imported."""
    files = sorted(p.name for p in (REPO / "js").glob("*.js"))
    page = editor.browser.new_page()
    requested, errors = [], []
    page.on("request", lambda r: "/extensions/" in r.url and r.url.endswith(".js") and requested.append(r.url))
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(frontend_server.url)
        page.wait_for_function("() => window.app?.graph && window.ADDTurboLive", timeout=60_000)
        base = next(url for url in requested if url.endswith("/add_turbo.js"))[: -len("add_turbo.js")]
        ours = [url[len(base) :] for url in requested if url.startswith(base)]
        assert sorted(ours) == files, ours  # each once: the frontend's import and the entry's share one module
        state = page.evaluate(
            """async (base) => {
              const api = window.comfyAPI.api.api, app = window.app;
              const listed = (await api.getExtensions()).filter((e) => api.fileURL(e).startsWith(base)
                || new URL(api.fileURL(e), location.href).href.startsWith(base));
              const count = () => app.extensions.filter((e) => e.name.startsWith('ADDTurbo')).length;
              const before = count();
              for (const e of listed) await import(new URL(api.fileURL(e), location.href).href);
              const shared = await import(base + 'shared.js');
              return { listed: listed.map((e) => e.split('/').pop()).sort(), before, after: count(),
                       same: shared.live === window.ADDTurboLive };
            }""",
            base,
        )
    finally:
        page.close()
    assert state["listed"] == files  # the server lists every file: the editor loads each on its own
    assert state["before"] == state["after"] == 1 and state["same"], state
    assert errors == []
