"""The job the CLI and the batch share: a workflow read from disk as an API-format prompt (with the UI
workflow beside it for the PNGs), the --set NODE.INPUT=VALUE overrides applied to it, and where the
ComfyUI to start is by default. `run` queues one Job; `batch` clones one per item.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import sys
from pathlib import Path

from .workflow import WorkflowError, input_names, is_api_format, set_widget_value, ui_to_api

PACK_DIR = Path(__file__).resolve().parents[2]  # the pack: <pack>/add_turbo/headless/job.py


def parse_value(text: str):
    """JSON where it parses (numbers, true/false, lists), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


class UsageError(WorkflowError):
    """A command line that cannot be run as written (exit code 2, as argparse's own usage errors)."""


def _node_label(node_id: str, node: dict) -> str:
    title = node.get("_meta", {}).get("title")
    return f"{node_id} {node['class_type']}" + (f" {title!r}" if title and title != node["class_type"] else "")


def _matching(prompt: dict, node_ref: str) -> list[str]:
    return [nid for nid, node in prompt.items() if node_ref in (nid, node["class_type"], node.get("_meta", {}).get("title"))]


def parse_overrides(prompt: dict, overrides: list[str], object_info: dict | None = None) -> list[tuple]:
    """The changes that NODE.INPUT=VALUE entries make to an API-format prompt, as (node id, input name,
    value); NODE is an id, title or class type. The prompt is not changed.

    Raises:
        UsageError: bad syntax, a NODE that matches no node or several, or an INPUT the node does not have;
            raised before any change, so nothing half-overridden is ever queued.
    """
    changes = []
    for item in overrides:
        target, sep, value = item.partition("=")
        node_ref, dot, input_name = target.rpartition(".")
        if not sep or not dot or not node_ref or not input_name:
            raise UsageError(f"--set {item!r}: write NODE.INPUT=VALUE, e.g. 4.seed=7 or ADDTurboSample.steps=2")
        matches = _matching(prompt, node_ref)
        if not matches:
            # A title may itself contain dots, and so may a dynamic input's name: try the other splits.
            for i in (i for i, c in enumerate(target) if c == "."):
                if found := _matching(prompt, target[:i]):
                    node_ref, input_name, matches = target[:i], target[i + 1:], found
                    break
        if not matches:
            listing = "\n".join(f"  {_node_label(nid, node)}" for nid, node in prompt.items())
            raise UsageError(f"--set {item!r}: no node matches {node_ref!r}; use a node id, title or class type "
                             f"(id, class type, title):\n{listing}")
        if len(matches) > 1:
            raise UsageError(f"--set {item!r}: {len(matches)} nodes match {node_ref!r} "
                             f"({', '.join(_node_label(nid, prompt[nid]) for nid in matches)}); use the node id")
        node_id, node = matches[0], prompt[matches[0]]
        names = input_names(node, object_info)
        if input_name not in names:
            close = difflib.get_close_matches(input_name, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UsageError(f"--set {item!r}: node {node_id} ({node['class_type']}) has no input {input_name!r}"
                             f"{hint}; its inputs: {', '.join(names)}")
        changes.append((node_id, input_name, parse_value(value)))
    return changes


class Job:
    """What one run queues: the API-format prompt and, for a UI-format workflow, that workflow with the
    same values in its widgets. The workflow goes into the prompt's extra_pnginfo, as the editor sends
    it, so that a saved PNG reopens in the editor as the graph that made it."""

    def __init__(self, path: Path, object_info: dict):
        try:
            workflow = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise WorkflowError(f"{path}: cannot read the workflow ({error})") from error
        if not isinstance(workflow, dict):
            raise WorkflowError(f"{path}: not a ComfyUI workflow")
        self.object_info = object_info
        self.workflow = None if is_api_format(workflow) else workflow
        self.prompt = workflow if self.workflow is None else ui_to_api(workflow, object_info)

    def set(self, node_id: str, input_name: str, value) -> None:
        """Set one input in the prompt and, where it is a widget, in the workflow; a value the workflow
        has no widget for (a connection, a dynamic input) leaves the image with the prompt alone."""
        self.prompt[node_id]["inputs"][input_name] = value
        if self.workflow is not None and not set_widget_value(self.workflow, node_id, input_name, value,
                                                              self.object_info):
            print(f"note: node {node_id} has no widget {input_name!r} in the workflow: the images carry the API "
                  "prompt only", file=sys.stderr)
            self.workflow = None

    def override(self, overrides: list[str]) -> Job:
        """Apply --set entries (refused as a whole, before any change, as parse_overrides says)."""
        for node_id, input_name, value in parse_overrides(self.prompt, overrides, self.object_info):
            self.set(node_id, input_name, value)
        return self

    def clone(self) -> Job:
        """A copy to change for one run (the node definitions shared)."""
        job = copy.copy(self)
        job.prompt, job.workflow = copy.deepcopy(self.prompt), copy.deepcopy(self.workflow)
        return job

    @property
    def extra_data(self) -> dict | None:
        return {"extra_pnginfo": {"workflow": self.workflow}} if self.workflow is not None else None


def default_comfyui() -> Path:
    """The ComfyUI this pack is installed in (custom_nodes/<pack>), else $COMFYUI_DIR."""
    installed = PACK_DIR.parent.parent
    if (installed / "main.py").exists():
        return installed
    return Path(os.environ.get("COMFYUI_DIR", installed))
