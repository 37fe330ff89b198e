"""ComfyUI workflow formats: the editor's UI format <-> the API ("prompt") format, driven by /object_info.

The node definitions (input order, which inputs are widgets, which INT widgets carry an extra
"control after generate" value) come from a server's GET /object_info, never from a copy here.
"""

from __future__ import annotations

import copy

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
VIRTUAL_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}  # editor-only, never sent to the server
MUTED, BYPASSED = 2, 4


class WorkflowError(ValueError):
    """A workflow that cannot be converted; the message names the node and the fix."""


def _is_widget(spec: list) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def ordered_inputs(node_def: dict) -> list[tuple[str, list]]:
    """(name, spec) of a node's inputs, required then optional, in the server's declared order."""
    out = []
    order = node_def.get("input_order", {})
    for section in ("required", "optional"):
        specs = node_def.get("input", {}).get(section, {})
        for name in order.get(section, list(specs)):
            out.append((name, specs[name]))
    return out


def input_names(node: dict, object_info: dict | None) -> list[str]:
    """The inputs an API-format node can take: the server's definition (optional ones included), then any
    other input the node already has (dynamic inputs, which a server need not list, stay settable)."""
    node_def = (object_info or {}).get(node["class_type"])
    names = [name for name, _ in ordered_inputs(node_def)] if node_def else []
    return names + [name for name in node.get("inputs", {}) if name not in names]


def _widget_slots(node_def: dict) -> list[tuple[str, bool, bool]]:
    """(widget name, has an extra control_after_generate value, required) in widgets_values order."""
    slots = []
    required = node_def.get("input", {}).get("required", {})
    for name, spec in ordered_inputs(node_def):
        if _is_widget(spec):
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            slots.append((name, bool(options.get("control_after_generate")), name in required))
    return slots


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """Convert an editor workflow ({nodes, links, ...}) to the API format POST /prompt takes.

    Raises:
        WorkflowError: a node type the server does not define, a widget value missing, a bypassed node.
    """
    links = {link[0]: link for link in workflow.get("links", [])}
    prompt = {}
    for node in workflow.get("nodes", []):
        kind = node["type"]
        if kind in VIRTUAL_NODES or node.get("mode") == MUTED:
            continue
        if node.get("mode") == BYPASSED:
            raise WorkflowError(f"node {node['id']} ({kind}) is bypassed: enable or delete it before running headless")
        if kind not in object_info:
            raise WorkflowError(f"node {node['id']} has type {kind!r}, which this server does not define: install the "
                                "node pack that provides it")
        node_def = object_info[kind]
        inputs = {}
        values = list(node.get("widgets_values") or [])
        linked = {i["name"]: i.get("link") for i in node.get("inputs", []) if i.get("link") is not None}
        position = 0
        for name, extra, required in _widget_slots(node_def):
            if position >= len(values):
                if not required:
                    break  # an optional widget added after the workflow was saved: the node's default applies
                raise WorkflowError(f"node {node['id']} ({kind}) has no value for widget {name!r}: re-save the workflow")
            inputs[name] = values[position]
            position += 2 if extra else 1
        for name, link_id in linked.items():
            link = links.get(link_id)
            if link is None:
                raise WorkflowError(f"node {node['id']} ({kind}) input {name!r} points at missing link {link_id}")
            inputs[name] = [str(link[1]), link[2]]
        known = {name for name, _ in ordered_inputs(node_def)}
        unknown = set(inputs) - known
        if unknown:
            raise WorkflowError(f"node {node['id']} ({kind}) has inputs {sorted(unknown)} the server does not define")
        prompt[str(node["id"])] = {"class_type": kind, "inputs": inputs, "_meta": {"title": node.get("title", kind)}}
    return prompt


def _default(spec: list):
    """The value the editor gives a widget that a workflow does not set."""
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "default" in options:
        return options["default"]
    if isinstance(spec[0], list):
        return spec[0][0] if spec[0] else None
    return options.get("options", [None])[0] if spec[0] == "COMBO" else None


def set_widget_value(workflow: dict, node_id: str, name: str, value, object_info: dict) -> bool:
    """Set a UI-format node's widget to `value` in its widgets_values, as the editor saves it, so that
    ui_to_api reads `value` back; a link into that input is removed, as the literal replaces it.

    Widgets before it that the workflow left out get their defaults. False when the node has no
    widget of that name (a connection input, a dynamic input): the workflow is left unchanged.
    """
    node = next((n for n in workflow.get("nodes", []) if str(n["id"]) == str(node_id)), None)
    node_def = object_info.get(node["type"]) if node is not None else None
    if node_def is None:
        return False
    specs = dict(ordered_inputs(node_def))
    values = list(node.get("widgets_values") or [])
    position = 0
    for slot, extra, _ in _widget_slots(node_def):
        if position >= len(values):
            values += [_default(specs[slot])] + (["fixed"] if extra else [])
        if slot == name:
            values[position] = value
            node["widgets_values"] = values
            _unlink(workflow, node, name)
            return True
        position += 2 if extra else 1
    return False


def _unlink(workflow: dict, node: dict, name: str) -> None:
    entry = next((i for i in node.get("inputs", []) if i.get("name") == name and i.get("link") is not None), None)
    if entry is None:
        return
    link_id, entry["link"] = entry["link"], None
    workflow["links"] = [link for link in workflow.get("links", []) if link[0] != link_id]
    for other in workflow.get("nodes", []):
        for output in other.get("outputs") or []:
            if link_id in (output.get("links") or []):
                output["links"].remove(link_id)


def is_api_format(workflow: dict) -> bool:
    return "nodes" not in workflow and all(isinstance(v, dict) and "class_type" in v for v in workflow.values())


def api_to_ui(prompt: dict, object_info: dict, positions: dict | None = None, notes: list | None = None) -> dict:
    """Lay an API-format graph out as an editor workflow (for shipping examples).

    Args:
        positions: node id -> [x, y]; notes: [(text, [x, y], [w, h])] Note nodes to add.
    """
    prompt = copy.deepcopy(prompt)
    positions = positions or {}
    nodes, links = [], []
    outputs_links: dict[tuple[str, int], list[int]] = {}
    for node_id, node in prompt.items():
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                link_id = len(links) + 1
                source_type = object_info[prompt[value[0]]["class_type"]]["output"][value[1]]
                links.append([link_id, int(value[0]), value[1], int(node_id), name, source_type])
                outputs_links.setdefault((value[0], value[1]), []).append(link_id)
    for order, (node_id, node) in enumerate(prompt.items()):
        node_def = object_info[node["class_type"]]
        inputs, widgets = [], []
        for name, spec in ordered_inputs(node_def):
            value = node["inputs"].get(name)
            if _is_widget(spec):
                options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                widgets.append(value if value is not None else options.get("default"))
                if options.get("control_after_generate"):
                    widgets.append("fixed")
                if options.get("image_upload"):
                    widgets.append("image")
            elif isinstance(value, list) or name in node_def.get("input", {}).get("required", {}):
                link = next((entry[0] for entry in links if entry[3] == int(node_id) and entry[4] == name), None)
                inputs.append({"name": name, "type": spec[0], "link": link})
        outputs = [{"name": out_name, "type": out_type, "slot_index": slot,
                    "links": outputs_links.get((node_id, slot), [])}
                   for slot, (out_type, out_name) in enumerate(zip(node_def["output"], node_def["output_name"], strict=True))]
        nodes.append({"id": int(node_id), "type": node["class_type"], "pos": positions.get(node_id, [order * 330, 0]),
                      "size": [300, 140], "flags": {}, "order": order, "mode": 0, "inputs": inputs, "outputs": outputs,
                      "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": widgets,
                      **({"title": node["_meta"]["title"]} if "_meta" in node else {})})
    next_id = max(int(k) for k in prompt) + 1
    for index, (text, pos, size) in enumerate(notes or []):
        nodes.append({"id": next_id + index, "type": "Note", "pos": pos, "size": size, "flags": {}, "order": len(nodes),
                      "mode": 0, "inputs": [], "outputs": [], "properties": {}, "widgets_values": [text]})
    ui_links = [[lid, src, slot, dst, _input_slot(nodes, dst, name), kind] for lid, src, slot, dst, name, kind in links]
    return {"last_node_id": max(n["id"] for n in nodes), "last_link_id": len(links), "nodes": nodes, "links": ui_links,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 0.75, "offset": [80, 330]}}, "version": 0.4}


def _input_slot(nodes: list, node_id: int, name: str) -> int:
    node = next(n for n in nodes if n["id"] == node_id)
    return next(i for i, entry in enumerate(node["inputs"]) if entry["name"] == name)
