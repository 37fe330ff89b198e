"""The GPU bench's runners for ComfyUI graphs: the stock graph and the pack's (text to image, Refine), the
exact path's reference images, and how the pack's engine ran a variant."""

from __future__ import annotations

import collections

from bench import gpu_plan as plan
from bench.gpu_stages import Stages
from devkit import graphs, pack

_LOADS: dict = {}  # (ckpt, stock, options) -> (MODEL, CLIP, VAE, loader message): variants share a load


def _load_key(ckpt: str, stock: bool, options: dict) -> tuple:
    return ckpt, stock, tuple(sorted(options.items()))


def loaded(ckpt: str, stock: bool, options: dict) -> bool:
    """Whether load_comfy already holds these models (a variant sharing them loads for free)."""
    return _load_key(ckpt, stock, options) in _LOADS


def load_comfy(ckpt: str, stock: bool, options: dict):
    """(MODEL, CLIP, VAE, loader message), loaded once per checkpoint and options, under
    torch.inference_mode as the executor runs every node: a compile warm-up in another grad mode
    would leave graphs the first image cannot use."""
    import torch

    key = _load_key(ckpt, stock, options)
    if key not in _LOADS:
        with torch.inference_mode():
            _LOADS[key] = graphs.load_stock_or_pack(ckpt, stock, **options)
    return _LOADS[key]


def _graph_runner(model, clip, vae, make_image, last_stage: str):
    """run(prompt, batch=1, keep=False, sync=True) -> Stages: the prompt encoded (stage "text"), then
    make_image(cond, batch, stages) -> the image on the CPU, its time up to `last_stage`; all under
    torch.inference_mode, as the executor runs every node. keep: Stages.image is the image [B, H, W, 3]."""
    import torch

    def run(prompt, batch=1, keep=False, sync=True):
        stages = Stages(sync)
        with torch.inference_mode():
            cond = graphs.encode(clip, prompt)
            stages.mark("text")
            image = make_image(cond, batch, stages)
        stages.mark(last_stage)
        stages.image = image if keep else None
        return stages

    run.model, run.clip, run.vae = model, clip, vae
    return run


def comfy_runner(variant: str, family: str, ckpt: str):
    """(run, loader message): run(prompt, batch=1, keep=False, sync=True) -> Stages for a ComfyUI graph,
    called the way the executor calls the nodes (under torch.inference_mode). keep: Stages.image is the
    image [B, H, W, 3] on the CPU."""
    stock = variant == "stock"
    model, clip, vae, info = load_comfy(ckpt, stock, plan.loader_options(variant))

    def sample_and_decode(cond, batch, stages):
        out = graphs.sample_stock_or_pack(model, cond, graphs.empty_latent(plan.SIZE, batch), plan.SEED, stock,
                                          spacing="trailing")
        stages.mark("unet")
        return graphs.decode(vae, out).cpu()

    return _graph_runner(model, clip, vae, sample_and_decode, "decode"), info


def refine_runner(variant: str, family: str, ckpt: str):
    """(run, loader message) for ADD Turbo Refine on `frame()` with the models of the variant's loader."""
    model, clip, vae, info = load_comfy(ckpt, False, plan.loader_options(variant))
    node = graphs.builtin("ADDTurboRefine")

    def refine(cond, batch, stages):
        (image,) = graphs.run(node, model=model, vae=vae, positive=cond, image=plan.frame(batch), seed=plan.SEED,
                              **plan.REFINE)
        return image.cpu()

    return _graph_runner(model, clip, vae, refine, "refine"), info


def exact_image(ckpt: str, mode: str, decoder: str):
    """The exact path's image for PROMPT and SEED (refine: of frame()), decoded by `decoder`: the
    loader's defaults sample, and the full VAE or the pack's TAESD decodes. Float, on the CPU."""
    import torch

    model, clip, vae, _ = load_comfy(ckpt, False, {})
    if decoder == "taesd":
        vae = load_comfy(ckpt, False, plan.loader_options("pack_engine"))[2]
    with torch.inference_mode():
        positive = graphs.encode(clip, plan.PROMPT)
        if mode == "txt2img":
            latent = graphs.turbo_sample(model, positive, graphs.empty_latent(plan.SIZE), seed=plan.SEED, steps=1)
            image = graphs.decode(vae, latent)
        else:
            (image,) = graphs.run(graphs.builtin("ADDTurboRefine"), model=model, vae=vae, positive=positive,
                                  image=plan.frame(), seed=plan.SEED, **plan.REFINE)
    return image.cpu().float()


def engine_note(run) -> str | None:
    """How the engine ran the variant's model (CUDA graph, direct path or fallback, and how often), and
    how often the text encoders' and TAESD's graphs were recorded and replayed."""
    module = pack.pack_module("nodes.engine", missing_ok=True)
    model = getattr(run, "model", None)
    if module is None or model is None or not module.engine_on(model):
        return None
    note = f"{module.status(model)}; runs {dict(module.state_of(model).runs)}"
    rooms = pack.pack_module("nodes.backends.cuda_graphs")
    for label, calls in (("text encoders", rooms.graphs_of(getattr(run, "clip", None), rooms.TEXT)),
                         ("TAESD decode", rooms.graphs_of(getattr(run, "vae", None), rooms.DECODE))):
        if calls:
            runs = sum((call.runs for call in calls), collections.Counter())
            failure = next((call.failure for call in calls if call.failure), None)
            note += f"; {label} {dict(runs) if runs else 'without graphs'}" + (f" ({failure})" if failure else "")
    return note
