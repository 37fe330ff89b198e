"""Batch throughput on Ray: images/s of `python -m add_turbo batch --ray` with 1 worker x 1 CPU and with
2 workers x 1 CPU, and the overhead per item of `batch` over a direct run on the same server.

Two models: the tiny SD-Turbo at 64 px, and the full-size random SD-Turbo on the pack's CPU fast path
(weight_dtype fast, TAESD, engine) at 512 px. images/s is taken from the manifest's finish times,
first image to last (worker start-up and model loading excluded). The overhead: the same items run
on one one-thread server, directly (the pack's client: queue, follow, fetch the PNG) and as a batch
(driver, manifest, PNG written and hashed); per item, in ms and as a share of the image time.

  scripts/bench.sh scale                    # both models, markdown to bench/results_scale.md
  scripts/bench.sh scale --models tiny --items 24
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from devkit import host

REPO = Path(__file__).resolve().parents[1]
MODELS = {
    "tiny": {"size": 64, "items": 24, "overhead_items": 12, "label": "tiny SD-Turbo, 64 px"},
    "full": {"size": 512, "items": 8, "overhead_items": 4, "label": "full-size SD-Turbo, 512 px, CPU fast path"},
}


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(host.STUBS_DIR), str(REPO)])}


def _workflow(model: str, folder: Path) -> Path:
    from devkit.graphs import txt2img_prompt

    host.init_in_process()
    from bench import model_links

    if model == "tiny":
        from devkit import turbo_models

        ckpt = model_links.link_model(turbo_models.build("sd_turbo").single_file, "checkpoints").name
        loader = {}
    else:
        from bench import speed

        speed._ensure_models()
        ckpt, loader = speed.CKPT, {"weight_dtype": "fast", "decoder": "taesd", "engine": "on"}
    prompt = txt2img_prompt(ckpt, size=MODELS[model]["size"], text="a cinematic photo of a red fox in the snow")
    prompt["1"]["inputs"].update(loader)
    path = folder / f"{model}.json"
    path.write_text(json.dumps(prompt))
    return path


def _batch(workflow: Path, out: Path, items: int, *extra) -> list[dict]:
    command = [sys.executable, "-m", "add_turbo", "batch", str(workflow), "--out", str(out),
               "--sweep", f"ADDTurboSample.seed=0:{items}", "--comfyui", str(host.COMFY_DIR),
               "--comfyui-args", " ".join(host.base_args()), *extra]
    done = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"batch failed (exit {done.returncode}): {done.stderr[-2000:]}")
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()[1:]]


def images_per_s(lines: list[dict]) -> float:
    """Images per second from the first finished image to the last (start-up and loading excluded)."""
    times = sorted(line["finished_at"] for line in lines)
    return (len(times) - 1) / (times[-1] - times[0])


def overhead(workflow: Path, folder: Path, items: int) -> dict:
    """Per item on one one-thread server: direct run (the client) vs batch (driver + manifest), in s."""
    from add_turbo.batch_worker import thread_env
    from add_turbo.client import Client

    prompt = json.loads(workflow.read_text())
    srv = host.start_server(env=thread_env(1))

    async def direct(seeds):
        async with Client(srv.url, progress=lambda data: None) as client:
            for seed in seeds:
                prompt["4"]["inputs"]["seed"] = seed
                await client.run(prompt)

    try:
        asyncio.run(direct([10_000]))  # load the model, warm up
        start = time.perf_counter()
        asyncio.run(direct(range(items)))
        direct_s = (time.perf_counter() - start) / items
        # the batch driver's own start (imports, object_info) is paid once per job: measured from its lines
        lines = _batch(workflow, folder / "overhead", items, "--server", srv.url)
        batch_s = (lines[-1]["finished_at"] - lines[0]["finished_at"]) / (items - 1)
        warm = _batch(workflow, folder / "overhead2", items, "--server", srv.url)
        batch_s = min(batch_s, (warm[-1]["finished_at"] - warm[0]["finished_at"]) / (items - 1))
    finally:
        srv.stop()
    return {"direct_s": direct_s, "batch_s": batch_s, "overhead_ms": 1000 * (batch_s - direct_s)}


def measure(model: str, items: int | None, folder: Path) -> dict:
    spec = MODELS[model]
    items = items or spec["items"]
    workflow = _workflow(model, folder)
    row = {"model": spec["label"]}
    row.update(overhead(workflow, folder / model, spec["overhead_items"]))
    for workers in (1, 2):
        lines = _batch(workflow, folder / model / f"ray{workers}", items, "--ray", "--workers", str(workers),
                       "--cpus-per-worker", "1")
        row[f"ips_{workers}"] = images_per_s(lines)
        row[f"image_s_{workers}"] = statistics.median(line["seconds"] for line in lines)
        print(f"{model}: {workers} worker(s): {row[f'ips_{workers}']:.3f} images/s", flush=True)
    row["scaling"] = row["ips_2"] / row["ips_1"]
    print(json.dumps(row), flush=True)
    return row


def report(rows: list[dict]) -> str:
    lines = ["# Batch on Ray: images/s and overhead", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}. Ray on this machine, "
             "each worker one ComfyUI with 1 CPU (1 torch thread). images/s from the first finished image to the last.",
             "", "| model | 1 worker x 1 CPU, images/s | 2 workers x 1 CPU, images/s | 2 vs 1 | image s (1 thread) | "
             "direct run s/item | batch s/item | overhead ms/item | overhead % |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['ips_1']:.3f} | {r['ips_2']:.3f} | {r['scaling']:.2f}x | {r['image_s_1']:.2f} | "
                     f"{r['direct_s']:.3f} | {r['batch_s']:.3f} | {r['overhead_ms']:.1f} | "
                     f"{100 * r['overhead_ms'] / 1000 / r['direct_s']:.1f} % |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,full")
    parser.add_argument("--items", type=int, help="items per Ray run (default: 24 tiny, 8 full)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results_scale.md"))
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="add_turbo_scale_"))
    try:
        rows = [measure(model, args.items, folder) for model in args.models.split(",")]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    Path(args.out).write_text(report(rows))
    print(report(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
