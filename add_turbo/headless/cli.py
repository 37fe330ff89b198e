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
import logging
import sys
from pathlib import Path

from .job import Job, UsageError, default_comfyui
from .server import ComfyServer, ServerStartError
from .workflow import WorkflowError

log = logging.getLogger("add_turbo.cli")


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


def worker_count(text: str):
    """--workers: 'auto' or a whole number >= 1."""
    return text if text == "auto" else positive_int(text, "a whole number of workers (1 or more) or auto")


def positive_int(text: str, what: str = "a whole number (1 or more)") -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give {what}")
    return int(text)


def positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of seconds above 0")
    return seconds


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
    batch.add_argument("--workers", type=worker_count, metavar="N|auto",
                       help="with --ray: at most N workers; auto (the default): as many as the cluster's nodes fit, "
                            "growing as nodes join")
    batch.add_argument("--min-workers", type=positive_int, metavar="N",
                       help="with --ray: start rendering once N workers are up, so that the first items are shared "
                            "(default 1; fewer when no more can start)")
    batch.add_argument("--worker-timeout", type=positive_seconds, metavar="SECONDS",
                       help="with --ray: a worker that does not answer for this long is lost and its item goes to the "
                            "others; with no worker left for this long the run stops (default: 60)")
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
