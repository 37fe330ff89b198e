"""Batch throughput on Ray: images/s of `python -m add_turbo batch --ray` with 1 worker x 1 CPU and with
2 workers x 1 CPU, and the overhead per item of `batch` over a direct run on the same server.

Two models: the tiny SD-Turbo at 64 px, and the full-size random SD-Turbo on the pack's CPU fast path
(weight_dtype fast, TAESD, engine) at 512 px. images/s is taken from the manifest's finish times,
first image to last, per worker (start-up and model loading excluded). The overhead: the same items run
on one one-thread server, directly (the pack's client: queue, follow, fetch the PNG) and as a batch
(driver, manifest, PNG written and hashed), each as its time per item beyond the server's own execution
(the history's timestamps) in the same run, so that the machine's drift between runs cancels; their
difference per item, in ms and as a share of the image time. images/s counts each worker's images
after its first (model loading excluded).

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
    "tiny": {"size": 64, "items": 48, "overhead_items": 48, "label": "tiny SD-Turbo, 64 px"},
    "full": {"size": 512, "items": 10, "overhead_items": 6, "label": "full-size SD-Turbo, 512 px, CPU fast path"},
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

        speed._ensure_models("sd_turbo")
        ckpt, loader = speed.CKPTS["sd_turbo"], {"weight_dtype": "fast", "decoder": "taesd", "engine": "on"}
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


def steady_images_per_s(lines: list[dict]) -> float:
    """Images per second once every worker has its model loaded: each worker's images after its first,
    over the time from its first finish to its last, summed over the workers."""
    rate = 0.0
    for worker in {line["worker"] for line in lines}:
        times = sorted(line["finished_at"] for line in lines if line["worker"] == worker)
        if len(times) > 1:
            rate += (len(times) - 1) / (times[-1] - times[0])
    return rate


def cost_beyond_server(cycles_s: float, lines_or_seconds) -> float:
    """Seconds per item beyond the server's own execution: the cycle less the mean execution time."""
    return cycles_s - statistics.mean(lines_or_seconds)


def overhead(workflow: Path, folder: Path, items: int) -> dict:
    """Per item on one one-thread server, each against the server's own execution time (its history's
    timestamps) in the same run: a direct run (the pack's client: queue, follow, fetch the PNG) and the
    batch (that, plus the driver: item prompt, dispatch, PNG written and hashed, manifest line)."""
    from add_turbo.headless.batch_worker import thread_env
    from add_turbo.headless.client import Client

    prompt = json.loads(workflow.read_text())
    srv = host.start_server(env=thread_env(1))

    async def direct(seeds) -> list[float]:
        executions = []
        async with Client(srv.url, progress=lambda data: None) as client:
            for seed in seeds:
                prompt["4"]["inputs"]["seed"] = seed
                # a folder of its own per image, as batch gives each item: the server's next-file-name scan
                # of a crowded output folder is not what is measured
                prompt["6"]["inputs"]["filename_prefix"] = f"add_turbo_scale/{folder.name}/{seed}"
                executions.append((await client.run(prompt)).server_seconds)
        return executions

    try:
        asyncio.run(direct([10_000]))  # load the model, warm up
        start = time.perf_counter()
        executions = asyncio.run(direct(range(items)))
        direct_cycle = (time.perf_counter() - start) / items
        lines = _batch(workflow, folder / "overhead", items, "--server", srv.url)
    finally:
        srv.stop()
    lines.sort(key=lambda line: line["finished_at"])
    batch_cycle = (lines[-1]["finished_at"] - lines[0]["finished_at"]) / (len(lines) - 1)
    direct_extra = cost_beyond_server(direct_cycle, executions)
    batch_extra = cost_beyond_server(batch_cycle, [line["server_seconds"] for line in lines[1:]])
    return {"execution_s": statistics.mean(executions), "direct_s": direct_cycle, "batch_s": batch_cycle,
            "direct_extra_ms": 1000 * direct_extra, "batch_extra_ms": 1000 * batch_extra,
            "overhead_ms": 1000 * (batch_extra - direct_extra)}


def measure(model: str, items: int | None, folder: Path) -> dict:
    spec = MODELS[model]
    items = items or spec["items"]
    workflow = _workflow(model, folder)
    row = {"model": spec["label"]}
    row.update(overhead(workflow, folder / model, spec["overhead_items"]))
    for workers in (1, 2):
        lines = _batch(workflow, folder / model / f"ray{workers}", items, "--ray", "--workers", str(workers),
                       "--cpus-per-worker", "1")
        row[f"ips_{workers}"] = steady_images_per_s(lines)
        row[f"image_s_{workers}"] = statistics.median(line["seconds"] for line in lines)
        print(f"{model}: {workers} worker(s): {row[f'ips_{workers}']:.3f} images/s", flush=True)
    row["scaling"] = row["ips_2"] / row["ips_1"]
    print(json.dumps(row), flush=True)
    return row


def report(rows: list[dict]) -> str:
    lines = ["# Batch on Ray: images/s and overhead", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}. Ray on this machine, "
             "each worker one ComfyUI with 1 CPU (1 torch thread). images/s once the models are loaded (each worker's "
             "images after its first, over its first to last finish, summed). Overhead: on one one-thread server, the "
             "time per item beyond the server's own execution (its history's timestamps), for a direct run (the client: "
             "queue, follow, fetch the PNG) and for the batch (that, plus the driver); their difference is the batch's "
             "overhead.",
             "", "| model | 1 worker x 1 CPU, images/s | 2 workers x 1 CPU, images/s | 2 vs 1 | server execution "
             "s/image | direct run beyond it, ms | batch beyond it, ms | batch overhead over direct, ms/item | of the "
             "image time |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['ips_1']:.3f} | {r['ips_2']:.3f} | {r['scaling']:.2f}x | "
                     f"{r['execution_s']:.3f} | {r['direct_extra_ms']:.1f} | {r['batch_extra_ms']:.1f} | "
                     f"{r['overhead_ms']:.1f} | {100 * r['overhead_ms'] / 1000 / r['execution_s']:.1f} % |")
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
