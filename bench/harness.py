"""The GPU bench's harness: builds each model family once, loads the variants' runners within a time
budget, runs the plan's sections (interleaved timing rounds, image checks against the exact path, the
batch sweep, a second start in a new process) and rewrites the report after each section."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

from bench import diffusers_runners, metrics, model_links, pack_runners, report
from bench import gpu_plan as plan
from bench.gpu_figures import Family, Runner
from devkit import host

STARTED = time.perf_counter()  # the time budget counts from here: bench.gpu imports this module first thing


def build_models(family: str, bench_dir: Path, smoke: bool = False):
    """(single-file name in models/checkpoints, diffusers pipeline fp16 on the GPU)."""
    import torch
    from safetensors.torch import save_file

    from devkit import turbo_models

    started = time.perf_counter()
    with torch.no_grad():
        pipe, single = turbo_models.BUILDERS[family](full_size=not smoke)
    name = f"bench_{family}_{'tiny' if smoke else 'full'}_random_fp16.safetensors"
    path = bench_dir / name
    bench_dir.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        save_file({k: v.half().contiguous() for k, v in single.items()}, str(path))
    del single
    model_links.link_model(path, "checkpoints")
    model_links.link_taesd()
    pipe = pipe.to(plan.DEVICE, torch.float16 if plan.DEVICE == "cuda" else torch.float32)
    print(f"[{family}] built and saved in {time.perf_counter() - started:.1f} s", flush=True)
    return name, pipe


class Budget:
    """The run's time budget, counted from the process start."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def elapsed(self) -> float:
        return time.perf_counter() - STARTED

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def allows(self, cost_s: float = 0.0) -> bool:
        return self.elapsed() + cost_s <= self.seconds


class Bench:
    """Runs the sections in order within the budget and rewrites the markdown after each."""

    def __init__(self, args, out: Path):
        self.args, self.out = args, out
        self.budget = Budget(args.budget_s)
        self.families: dict[str, Family] = {}
        self.log: list[str] = []  # sections run or skipped, in order

    def skip(self, text: str):
        print(f"SKIP {text}", flush=True)
        self.log.append(f"skipped: {text}")

    def family(self, name: str) -> Family | None:
        if name not in self.families:
            if not self.budget.allows(plan.COSTS_S["build"][name] if plan.DEVICE == "cuda" else 0):
                return None
            ckpt, pipe = build_models(name, host.HOME / "bench", plan.DEVICE == "cpu")
            self.families[name] = Family(name, ckpt, pipe)
        return self.families[name]

    def section(self, name: str):
        family, kind, variants = plan.SECTIONS[name]
        variants = [v for v in variants if (self.args.variants is None or v in self.args.variants)
                    and not (self.args.smoke and v in plan.SMOKE_SKIPS)]
        if family not in self.args.families or not variants:
            return
        if not self.budget.allows():
            return self.skip(f"{name}: the time budget ({self.args.budget_s:.0f} s) is spent")
        began = time.perf_counter()
        try:
            fam = self.family(family)
            if fam is None:
                return self.skip(f"{name}: building {family} would pass the time budget")
            print(f"\n===== {name} ({self.budget.elapsed():.0f} s into the run)", flush=True)
            getattr(self, kind)(fam, variants)
            self.log.append(f"{name}: {time.perf_counter() - began:.0f} s")
        except Exception as error:  # recorded; the next section still runs
            traceback.print_exc()
            self.log.append(f"{name}: FAILED after {time.perf_counter() - began:.0f} s: {_short(error)}")
        self.write()

    # -- loading

    def ensure(self, fam: Family, variant: str) -> Runner | None:
        """The variant's runner, loaded now unless it failed before or its compile would not fit."""
        if variant in fam.runners or variant in fam.dropped:
            return fam.runners.get(variant)
        cost, seconds = self.load_cost(fam, variant)
        if not self.budget.allows(seconds):
            fam.dropped.add(variant)
            fam.notes[variant].append(f"skipped: about {seconds:.0f} s of compiling would pass the time budget "
                                      f"({self.budget.left():.0f} s left)")
            return None
        began = time.perf_counter()
        try:
            runner = self.make_runner(fam, variant)
        except Exception as error:
            traceback.print_exc()
            fam.dropped.add(variant)
            fam.notes[variant].append(f"FAILED to load: {_short(error)}")
            return None
        runner.load_s = time.perf_counter() - began
        if cost is not None:
            fam.paid.add(cost)
        fam.runners[variant] = runner
        print(f"[{fam.name}] loaded {variant} in {runner.load_s:.1f} s {runner.note}", flush=True)
        return runner

    def load_cost(self, fam: Family, variant: str) -> tuple[str | None, float]:
        """(COSTS_S key, estimated seconds) of the variant's one-time compile; nothing for a shared load."""
        cost = plan.one_time_cost(variant)
        if cost == "pack_compile":
            if pack_runners.loaded(fam.ckpt, False, plan.loader_options(variant)):
                return None, 0.0
            estimate = plan.COSTS_S["pack_reload" if cost in fam.paid else cost][fam.name]  # graphs on disk by then
            return cost, float(estimate)
        if cost is None or cost in fam.paid:
            return None, 0.0
        return cost, float(plan.COSTS_S[cost][fam.name])

    def make_runner(self, fam: Family, variant: str) -> Runner:
        if "diffusers" in variant:
            run, info = diffusers_runners.diffusers_runner(variant, fam.name, fam.pipe)
        elif variant.startswith("refine_"):
            run, info = pack_runners.refine_runner(variant, fam.name, fam.ckpt)
        else:
            run, info = pack_runners.comfy_runner(variant, fam.name, fam.ckpt)
        full = variant.removeprefix("refine_") in ("stock", "pack_exact", "diffusers_fp16")
        return Runner(run, "full" if full else "taesd", "refine" if variant.startswith("refine_") else "txt2img",
                      0.0, info)

    # -- sections

    def measure(self, fam: Family, variants: list[str]):
        """Interleaved rounds of the variants, then each one's image against the exact path."""
        live = [v for v in variants if self.ensure(fam, v) is not None]
        for round_index in range(self.args.rounds):
            if round_index and not self.budget.allows():
                fam.notes[""].append(f"{', '.join(live)}: {round_index} of {self.args.rounds} rounds (time budget)")
                break
            for variant in list(live):
                try:
                    self.turn(fam, variant, round_index)
                except Exception as error:
                    traceback.print_exc()
                    fam.notes[variant].append(f"FAILED in round {round_index + 1}: {_short(error)}")
                    live.remove(variant)
        for variant in live:
            self.check_image(fam, variant)

    def turn(self, fam: Family, variant: str, round_index: int):
        """Warm-up images, timed images (no extra syncs), then images synchronised at each stage."""
        run, a = fam.runners[variant].run, self.args
        for i in range(a.warmup + a.images + a.stage_images):
            staged = i >= a.warmup + a.images
            began = time.perf_counter()
            stages = run(plan.prompt_for(variant, f"{round_index}-{i}"), sync=staged)
            total = time.perf_counter() - began
            fam.first.setdefault(variant, total)
            if staged:
                fam.stages[variant].append(stages.times)
            elif i >= a.warmup:
                fam.totals[variant].append(total)
        rows = fam.totals[variant][-a.images:]
        print(f"[{fam.name}] round {round_index + 1} {variant:36s} median {statistics.median(rows) * 1e3:8.2f} ms",
              flush=True)

    def check_image(self, fam: Family, variant: str):
        """The variant's image for PROMPT (after its timed runs: replayed graphs included) vs the exact path's."""
        runner = fam.runners[variant]
        try:
            image = runner.run(plan.PROMPT, keep=True).image
            fam.diffs[variant] = metrics.difference(image, self.reference(fam, runner.mode, runner.decoder))
        except Exception as error:
            traceback.print_exc()
            fam.notes[variant].append(f"image check FAILED: {_short(error)}")
        if (note := pack_runners.engine_note(runner.run)) is not None:
            fam.engine[variant] = note

    def reference(self, fam: Family, mode: str, decoder: str):
        """The exact path's image for PROMPT and SEED (refine: of frame()), decoded by `decoder`, made
        once per family (see pack_runners.exact_image)."""
        if (mode, decoder) not in fam.references:
            fam.references[(mode, decoder)] = pack_runners.exact_image(fam.ckpt, mode, decoder)
        return fam.references[(mode, decoder)]

    def sweep(self, fam: Family, variants: list[str]):
        """Images/s per batch size, prompt unchanged; a variant stops at its first failure (memory)."""
        for batch in self.args.batches:
            if not self.budget.allows():
                fam.notes[""].append(f"batch sweep stopped before batch {batch} (time budget)")
                break
            for variant in variants:
                if self.ensure(fam, variant) is not None and (variant, "sweep") not in fam.dropped:
                    self.sweep_batch(fam, variant, batch)
            self.write()

    def sweep_batch(self, fam: Family, variant: str, batch: int):
        import torch

        if batch > 1 and plan.one_time_cost(variant) == "diffusers_compile" and "diffusers_recompile" not in fam.paid:
            if not self.budget.allows(plan.COSTS_S["diffusers_recompile"][fam.name]):
                fam.dropped.add((variant, "sweep"))
                fam.notes[variant].append(f"sweep stopped at batch {batch}: a recompile would pass the time budget")
                return
            fam.paid.add("diffusers_recompile")
        run = fam.runners[variant].run
        try:
            for _ in range(plan.SWEEP_WARMUP):
                run(plan.PROMPT, batch=batch, sync=False)
            times = []
            for _ in range(self.args.sweep_images):
                began = time.perf_counter()
                run(plan.PROMPT, batch=batch, sync=False)
                times.append(time.perf_counter() - began)
        except Exception as error:
            traceback.print_exc()
            fam.dropped.add((variant, "sweep"))
            fam.notes[variant].append(f"sweep FAILED at batch {batch}: {_short(error)}")
            if plan.DEVICE == "cuda":
                torch.cuda.empty_cache()
            return
        fam.sweep[(variant, batch)] = times
        print(f"[{fam.name}] sweep {variant:36s} batch {batch:3d}: {batch / statistics.median(times):8.1f} images/s",
              flush=True)

    def second_start(self, fam: Family, variants: list[str]):
        """A new process loads the variant again, with the compiled graphs this run left on disk."""
        for variant in variants:
            if variant not in fam.runners:
                fam.notes[variant].append("second start not run: no first start in this run")
                continue
            if not self.budget.allows(plan.COSTS_S["second_start"][fam.name] if plan.DEVICE == "cuda" else 0):
                fam.notes[variant].append("second start skipped: it would pass the time budget")
                continue
            command = [sys.executable, "-m", "bench.gpu", "--second-start", fam.name, variant, fam.ckpt,
                       "--size", str(plan.SIZE), *(["--smoke"] if plan.DEVICE == "cpu" else [])]
            began = time.perf_counter()
            try:
                done = subprocess.run(command, cwd=plan.REPO, capture_output=True, text=True,
                                      timeout=max(60.0, self.budget.left() + 60))
            except subprocess.TimeoutExpired:
                fam.notes[variant].append("second start: timed out")
                continue
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            if done.returncode or not lines:
                fam.notes[variant].append(f"second start FAILED (exit {done.returncode}): "
                                          f"{done.stderr.strip()[-300:]}".replace("\n", " "))
                continue
            fam.starts[variant] = {**json.loads(lines[-1]), "process_s": time.perf_counter() - began}
            print(f"[{fam.name}] second start of {variant}: {fam.starts[variant]}", flush=True)

    # -- the markdown

    def write(self):
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(report.render(self))
        print(f"written to {self.out} ({self.budget.elapsed():.0f} s into the run)", flush=True)


def _short(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error)[:200]}".replace("\n", " ")

