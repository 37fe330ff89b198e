"""`python -m add_turbo batch`: render a workflow's sweep, each item's image written once into DIR with a
line in DIR/manifest.jsonl, resumable, on one ComfyUI or on Ray workers (add_turbo.headless.ray_batch).

The driver converts the workflow once, makes each item's prompt (the --set and the item's overrides
applied, the UI workflow beside it for the PNG, as `run` does), hands items to the workers and lands
each outcome: images through a temporary file and a rename, then the manifest line. An item already in
the manifest is never rendered again, and a second outcome of an item (a retry whose first try also
finished) is dropped.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import time
from pathlib import Path

from . import sweep
from .batch_worker import NoWorkerLeft, Renderer
from .job import Job, default_comfyui, parse_overrides
from .manifest import Manifest, write_atomic
from .workflow import WorkflowError

SAMPLER_INPUT = "positive"  # the prompt that feeds a sampler comes in through this input


def say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def pixel_hash(png: bytes) -> str:
    """sha256 of an image's decoded pixels (mode, size, bytes): equal for equal images, whatever the PNG
    encoder's settings or text chunks."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        image.load()
        header = f"{image.mode} {image.size[0]}x{image.size[1]}\n".encode()
        return hashlib.sha256(header + image.tobytes()).hexdigest()


def prompt_text_node(prompt: dict) -> str:
    """The id of the CLIP Text Encode whose text feeds the sampler's `positive` input (following
    conditioning nodes in between).

    Raises:
        sweep.SpecError: none, or several.
    """
    found, seen = set(), set()
    todo = [v[0] for node in prompt.values() for name, v in node["inputs"].items()
            if name == SAMPLER_INPUT and isinstance(v, list)]
    while todo:
        node_id = str(todo.pop())
        if node_id in seen or node_id not in prompt:
            continue
        seen.add(node_id)
        node = prompt[node_id]
        if node["class_type"] == "CLIPTextEncode" and isinstance(node["inputs"].get("text"), str):
            found.add(node_id)
        else:
            todo += [v[0] for v in node["inputs"].values() if isinstance(v, list) and len(v) == 2]
    if len(found) != 1:
        what = "no CLIP Text Encode with a text widget" if not found else f"{len(found)} (nodes {', '.join(sorted(found))})"
        raise sweep.SpecError(f"--prompts: {what} feeds the sampler's positive input; name the input: "
                              "--prompts NODE.text=FILE")
    return found.pop()


class Plan:
    """The parsed command: axes (sweeps, then the prompt list) and the job key. Built before anything
    starts, so that a bad spec is refused at once."""

    def __init__(self, args):
        self.workflow_path = Path(args.workflow)
        try:
            self.workflow = json.loads(self.workflow_path.read_text())
        except (OSError, ValueError) as error:
            raise WorkflowError(f"{self.workflow_path}: cannot read the workflow ({error})") from error
        if not isinstance(self.workflow, dict):
            raise WorkflowError(f"{self.workflow_path}: not a ComfyUI workflow")
        self.axes = [sweep.parse_sweep(entry) for entry in args.sweep]
        if args.prompts:
            target, sep, file = args.prompts.rpartition("=")
            if sep and "." not in target:
                raise sweep.SpecError(f"--prompts {args.prompts!r}: write FILE or NODE.INPUT=FILE")
            self.axes.append(sweep.Axis(target if sep else "", sweep.read_prompts(file if sep else args.prompts)))
        if not self.axes:
            raise sweep.SpecError("nothing to sweep: give --sweep NODE.INPUT=SPEC and/or --prompts FILE")
        self.sets = list(args.set)
        self.key = sweep.job_key(self.workflow, self.sets, self.axes)
        self.items = sweep.items(self.axes)

    def header(self) -> dict:
        return {"workflow": str(self.workflow_path), "set": self.sets, "items": len(self.items),
                "axes": [{"target": a.target or "(the prompt text)", "values": len(a.values)} for a in self.axes]}


def item_requests(plan: Plan, object_info: dict, todo: list):
    """The workers' input for each item of `todo`: its prompt and extra_data, as `run` makes them.

    Raises (before the first item is made):
        job.UsageError: a --set or --sweep names no such node or input.
    """
    base = Job(plan.workflow_path, object_info).override(plan.sets)
    targets = []
    for axis in plan.axes:
        target = axis.target or f"{prompt_text_node(base.prompt)}.text"
        (node_id, input_name, _), = parse_overrides(base.prompt, [f"{target}={json.dumps(axis.values[0])}"], object_info)
        targets.append((node_id, input_name))

    def make(item):
        job = base.clone()
        for (node_id, input_name), (_, value) in zip(targets, item.overrides, strict=True):
            job.set(node_id, input_name, value)
        # Each item saves under a name of its own on the server: workers that share an output folder never
        # pick the same file name, so the image fetched back is this item's.
        for node_id, node in job.prompt.items():
            if isinstance(node["inputs"].get("filename_prefix"), str):
                job.set(node_id, "filename_prefix", f"add_turbo_batch/{plan.key}/{item.stem}")
        return {"index": item.index, "prompt": job.prompt, "extra_data": job.extra_data}

    return (make(item) for item in todo)


class LocalWorkers:
    """One worker in this process: a Renderer on `url`, or on an embedded ComfyUI."""

    def __init__(self, url: str | None, comfyui: Path | None, comfyui_args: list, threads: int | None):
        self.renderer = Renderer("local", url=url, comfyui=comfyui or default_comfyui(), comfyui_args=comfyui_args,
                                 threads=threads)

    def object_info(self) -> dict:
        return self.renderer.object_info()

    def outcomes(self, requests, note=None):
        for request in requests:
            yield self.renderer.render(request)

    def describe(self) -> str:
        return f"one ComfyUI at {self.renderer.url}"

    def status(self) -> str:
        return ""

    def summary(self) -> str:
        return ""

    def close(self) -> None:
        self.renderer.close()


def land(outcome: dict, item: sweep.Item, out: Path, manifest: Manifest) -> None:
    """Write an outcome's images (each through a temporary file) and then its manifest line."""
    images = outcome.get("images") or []
    files, hashes = [], []
    for k, (server_name, data) in enumerate(images):
        suffix = Path(server_name).suffix or ".png"  # the server's own format (PNG, or WebP from an animated save)
        name = f"{item.stem}{suffix}" if len(images) == 1 else f"{item.stem}_{k}{suffix}"
        write_atomic(out / name, data)
        files.append(name)
        try:
            hashes.append(pixel_hash(data))
        except OSError as error:  # PIL cannot read it: the file is kept, without a pixel hash
            hashes.append(f"unreadable: {error}")
    manifest.record({"index": item.index, "overrides": dict(item.overrides), "files": files, "pixels_sha256": hashes,
                     "worker": outcome.get("worker"), "node": outcome.get("node"),
                     "server_pid": outcome.get("server_pid"), "attempt": outcome.get("attempt", 1),
                     "seconds": round(outcome.get("seconds", 0.0), 3),
                     "server_seconds": outcome.get("server_seconds"), "finished_at": round(time.time(), 3),
                     "status": outcome["status"],
                     "error": outcome.get("error")})


def run_batch(args) -> int:
    """The batch command; its exit code: 0 when every item is done, 1 when any failed or the run stopped
    on an error, 2 for a bad command line, 130 on Ctrl-C."""
    from tqdm import tqdm

    check_worker_flags(args)
    if args.ray is not None:
        from .ray_batch import require_ray

        require_ray()
    plan = Plan(args)  # refuses bad specs before anything starts
    out = Path(args.out)
    manifest = Manifest(out, plan.key, plan.header())
    by_index = {item.index: item for item in plan.items}
    todo = [item for item in plan.items if item.index not in manifest.finished]
    skipped = len(plan.items) - len(todo)
    counts = {"done": 0, "failed": 0}
    workers, stopped, summary = None, None, ""
    try:
        if todo:
            workers = make_workers(args, plan.key)
            requests = item_requests(plan, workers.object_info(), todo)
            say(f"batch {plan.key}: {len(todo)} of {len(plan.items)} items to render on {workers.describe()}; "
                f"into {out}")
            with tqdm(total=len(todo), unit="img", file=sys.stderr, dynamic_ncols=True, smoothing=0.1) as bar:
                def note(text: str) -> None:
                    bar.write(text, file=sys.stderr)
                    bar.set_postfix_str(workers.status())

                for outcome in workers.outcomes(requests, note):
                    if outcome["index"] in manifest.finished:
                        continue  # a retried item whose first try also finished: landed once already
                    land(outcome, by_index[outcome["index"]], out, manifest)
                    counts[outcome["status"]] += 1
                    if outcome["status"] == "failed":
                        bar.write(f"item {outcome['index']} failed: {outcome['error']}")
                    bar.set_postfix_str(workers.status(), refresh=False)
                    bar.update(1)
    except KeyboardInterrupt:
        stopped = "interrupted"
    except NoWorkerLeft as error:
        say(f"batch {plan.key}: {error}")
        stopped = "no worker left"
    finally:
        if workers is not None:
            summary = workers.summary()
            workers.close()
        manifest.close()
    earlier_failed = sum(1 for i, e in manifest.finished.items() if e["status"] == "failed") - counts["failed"]
    failed = counts["failed"] + earlier_failed
    missing = len(plan.items) - len(manifest.finished)
    say(f"batch {plan.key}: {counts['done']} done, {skipped} skipped (in {manifest.path} already), {failed} failed"
        + (f", {missing} not rendered ({stopped}: run the same command again to finish)" if missing else "")
        + (f"; {summary}" if summary else ""))
    if stopped == "interrupted":
        return 130
    return 0 if failed == 0 and missing == 0 else 1


def worker_ceiling(args) -> int | None:
    """--workers N, or None for auto (as many as the cluster fits)."""
    return None if args.workers in (None, "auto") else args.workers


def check_worker_flags(args) -> None:
    """Refuse worker flags that do not go together (sweep.SpecError), before the out folder is claimed."""
    if args.ray is None:
        if args.workers not in (None, 1) or args.worker_timeout is not None or args.min_workers is not None:
            raise sweep.SpecError("--workers, --min-workers and --worker-timeout need --ray (without it, one ComfyUI "
                                  "renders the items in order)")
        return
    ceiling = worker_ceiling(args)
    if args.min_workers is not None and ceiling is not None and args.min_workers > ceiling:
        raise sweep.SpecError(f"--min-workers {args.min_workers} is more than --workers {ceiling}: lower it or raise "
                              "--workers")
    if args.server:
        raise sweep.SpecError("--server and --ray exclude each other: each Ray worker starts its own ComfyUI")


def make_workers(args, key: str):
    """RayWorkers with --ray, else LocalWorkers (--server, or an embedded ComfyUI)."""
    comfyui_args = args.comfyui_args.split()
    if args.ray is None:
        return LocalWorkers(args.server, args.comfyui, comfyui_args, args.cpus_per_worker)
    from .ray_batch import RayWorkers

    return RayWorkers(None if args.ray == "local" else args.ray, key, worker_ceiling(args),
                      args.cpus_per_worker or 1, args.gpus_per_worker, str(args.comfyui) if args.comfyui else None,
                      comfyui_args, worker_timeout=args.worker_timeout, note=say, min_workers=args.min_workers or 1)
