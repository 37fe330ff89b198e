"""Headless runner: run a UI- or API-format workflow on a ComfyUI server and write its images.

  python -m add_turbo run WORKFLOW.json [--server URL] [--set NODE.INPUT=VALUE ...] [--out DIR]
  python -m add_turbo run WORKFLOW.json --watch prompt.txt     # re-run whenever the prompt file changes
  python -m add_turbo batch WORKFLOW.json --sweep seed.seed=0:1000 [--prompts FILE] --out DIR [--ray [ADDRESS]]

NODE is a node id, a node title or a class type (when unique). Without --server an embedded ComfyUI
is started (the one this pack is installed in, or --comfyui DIR) and stopped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import difflib
import json
import logging
import os
import sys
from pathlib import Path

from .server import ComfyServer, ServerStartError
from .workflow import WorkflowError, input_names, is_api_format, set_widget_value, ui_to_api

log = logging.getLogger("add_turbo.cli")
PACK_DIR = Path(__file__).resolve().parents[1]


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


def write_images(result, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in result.images:
        path = out / name
        path.write_bytes(data)
        paths.append(path)
    return paths


async def run_once(url: str, args) -> int:
    from .client import Client

    async with Client(url) as client:
        info = await client.object_info()
        job = Job(Path(args.workflow), info).override(args.set)
        result = await client.run(job.prompt, extra_data=job.extra_data)
        for path in write_images(result, Path(args.out)):
            print(path)
        print(f"done in {result.seconds:.2f} s", file=sys.stderr)
        return 0


async def watch(url: str, args) -> int:
    """Re-run whenever the prompt file changes; its text goes into every CLIPTextEncode `text` input."""
    from .client import Client, PromptError

    watched, last, runs = Path(args.watch), None, 0
    async with Client(url) as client:
        info = await client.object_info()
        base = Job(Path(args.workflow), info).override(args.set)
        print(f"watching {watched} (Ctrl-C to stop)", file=sys.stderr)
        while args.max_runs is None or runs < args.max_runs:
            stamp = watched.stat().st_mtime_ns if watched.exists() else None
            if stamp is None or stamp == last:
                await asyncio.sleep(0.2)
                continue
            last = stamp
            text = watched.read_text().strip()
            job = base.clone()
            for node_id, node in base.prompt.items():
                if node["class_type"] == "CLIPTextEncode":
                    job.set(node_id, "text", text)
            try:
                result = await client.run(job.prompt, extra_data=job.extra_data)
            except PromptError as error:
                print(f"error: {error}", file=sys.stderr)
                continue
            finally:
                runs += 1
            for path in write_images(result, Path(args.out)):
                print(f"{path}  <- {text!r} ({result.seconds:.2f} s)")
    return 0


async def run_command(url: str, args) -> int:
    """run_once or watch, with every expected failure as one message on stderr and an exit code."""
    import aiohttp

    from .client import PromptError, ServerUnreachable

    try:
        return await (watch(url, args) if args.watch else run_once(url, args))
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (WorkflowError, PromptError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (ServerUnreachable, aiohttp.ClientError) as error:
        message = str(error) if isinstance(error, ServerUnreachable) else f"lost the ComfyUI server at {url} ({error})"
        fix = ": start ComfyUI, or leave out --server to start the one this pack is installed in" if args.server else ""
        print(f"error: {message}{fix}", file=sys.stderr)
        return 1


def default_comfyui() -> Path:
    """The ComfyUI this pack is installed in (custom_nodes/<pack>), else $COMFYUI_DIR."""
    installed = PACK_DIR.parent.parent
    if (installed / "main.py").exists():
        return installed
    return Path(os.environ.get("COMFYUI_DIR", installed))


def batch_command(args) -> int:
    """`batch`, with every expected failure as one message on stderr and an exit code."""
    import aiohttp

    from .batch import run_batch
    from .batch_worker import WorkerStartError
    from .client import ServerUnreachable
    from .manifest import ManifestMismatch
    from .sweep import SpecError

    try:
        return run_batch(args)
    except (UsageError, SpecError, ManifestMismatch) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (WorkflowError, WorkerStartError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (ServerUnreachable, aiohttp.ClientError, TimeoutError) as error:
        print(f"error: lost the ComfyUI server ({error or type(error).__name__}); run the same command again to "
              "finish the job",
              file=sys.stderr)
        return 1
    except Exception as error:  # Ray's own errors: a worker Ray could not restart, a lost cluster
        if not type(error).__module__.startswith("ray."):
            raise
        print(f"error: Ray: {error}; run the same command again to finish the job", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m add_turbo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a workflow and write its images")
    run.add_argument("workflow", help="UI- or API-format workflow JSON")
    run.add_argument("--server", help="URL of a running ComfyUI (default: start an embedded one)")
    run.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE", help="override an input")
    run.add_argument("--out", default="output", help="folder for the images (default: ./output)")
    run.add_argument("--watch", metavar="FILE", help="re-run whenever this prompt text file changes")
    run.add_argument("--max-runs", type=int, help="with --watch: stop after this many runs")
    run.add_argument("--comfyui", type=Path, default=None, help="ComfyUI folder for the embedded server")
    run.add_argument("--comfyui-args", default="", help="extra arguments for the embedded server (e.g. '--cpu')")
    batch = sub.add_parser("batch", help="render a sweep: every item once into --out, resumable, optionally on Ray")
    batch.add_argument("workflow", help="UI- or API-format workflow JSON")
    batch.add_argument("--out", required=True, help="folder for the images and manifest.jsonl")
    batch.add_argument("--sweep", action="append", default=[], metavar="NODE.INPUT=SPEC",
                       help="SPEC is A:B (integers A to B-1) or v1,v2,...; several sweeps give their product")
    batch.add_argument("--prompts", metavar="[NODE.INPUT=]FILE",
                       help="one prompt per line, into the CLIP Text Encode that feeds the sampler (or NODE.INPUT)")
    batch.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE", help="override an input")
    batch.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                       help="render on Ray: alone, start Ray on this machine; 'auto' or an address joins a cluster")
    batch.add_argument("--workers", type=int, help="with --ray: how many (default: as many as the cluster fits)")
    batch.add_argument("--cpus-per-worker", type=int, help="CPUs Ray reserves for a worker, and its torch threads")
    batch.add_argument("--gpus-per-worker", type=float, default=0, help="with --ray: GPUs per worker (Ray sets the device)")
    batch.add_argument("--server", help="without --ray: URL of a running ComfyUI (default: start an embedded one)")
    batch.add_argument("--comfyui", type=Path, default=None, help="ComfyUI folder for the started servers")
    batch.add_argument("--comfyui-args", default="", help="extra arguments for the started servers (e.g. '--cpu')")
    args = parser.parse_args(argv)
    if args.command == "batch":
        return batch_command(args)

    server = None
    url = args.server
    if url is None:
        comfyui = args.comfyui or default_comfyui()
        try:
            server = ComfyServer(comfyui, args.comfyui_args.split())
            server.wait_ready()
        except ServerStartError as error:
            if server is not None:
                server.stop()
            print(f"error: the embedded ComfyUI: {error}: pass --comfyui DIR or --server URL", file=sys.stderr)
            return 1
        url = server.url
    try:
        return asyncio.run(run_command(url, args))
    except KeyboardInterrupt:
        return 130
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    raise SystemExit(main())
