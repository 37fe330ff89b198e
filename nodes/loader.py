"""ADDTurboLoader: a turbo checkpoint (single file or diffusers folder) -> MODEL, CLIP, VAE.

The node resolves the name, gathers its widgets into one LoaderOptions and runs the loading pipeline
(loading.py); the engines' warm-ups and notes make its message.
"""

import logging
import os

import comfy.model_management as mm
import folder_paths
from comfy_api.v0_0_2 import io

from . import backends, compile_cache, compiling, precision, weights
from .backends import cpu_kernels
from .engine import ENGINE_MODES
from .engine import status as engine_status
from .loader_options import ATTENTIONS, CPU_BACKENDS, DECODERS, LoaderOptions
from .loading import load_turbo, reload_patchers
from .schema import turbo_schema
from .warm_up import compile_warm_up, engine_warm_up

log = logging.getLogger(__name__)

HOST_SYMBOLS = [
    ("folder_paths", "get_filename_list", ("folder_name",)),
    ("folder_paths", "get_folder_paths", ("folder_name",)),
    ("folder_paths", "get_full_path", ("folder_name", "filename")),
    ("comfy_api.v0_0_2", "io.ComfyNode.define_schema", ()),
    ("comfy_api.v0_0_2", "io.ComfyNode.execute", ()),
    ("comfy_api.v0_0_2", "io.Combo.Input", ("id", "options", "default", "optional", "tooltip")),
    ("comfy_api.v0_0_2", "io.Boolean.Input", ("id", "default", "optional", "tooltip")),
    ("comfy_api.v0_0_2", "io.Model.Output", ("tooltip",)),
    ("comfy_api.v0_0_2", "io.Clip.Output", ("tooltip",)),
    ("comfy_api.v0_0_2", "io.Vae.Output", ("tooltip",)),
    ("comfy_api.v0_0_2", "io.NodeOutput", ("ui",)),
]
DIFFUSERS_TAG = "[diffusers] "



def checkpoint_choices() -> list[str]:
    """Single files from models/checkpoints, then diffusers folders from models/diffusers."""
    names = [n for n in folder_paths.get_filename_list("checkpoints")]
    folders = []
    for root in folder_paths.get_folder_paths("diffusers"):
        if os.path.isdir(root):
            folders += [d for d in sorted(os.listdir(root)) if os.path.isfile(os.path.join(root, d, "model_index.json"))]
    return names + [DIFFUSERS_TAG + d for d in folders]


def _resolve(ckpt_name: str) -> str:
    if ckpt_name.startswith(DIFFUSERS_TAG):
        name = ckpt_name[len(DIFFUSERS_TAG):]
        for root in folder_paths.get_folder_paths("diffusers"):
            if os.path.isdir(os.path.join(root, name)):
                return os.path.join(root, name)
        folders = ", ".join(folder_paths.get_folder_paths("diffusers"))
    else:
        path = folder_paths.get_full_path("checkpoints", ckpt_name)
        if path is not None:
            return path
        folders = ", ".join(folder_paths.get_folder_paths("checkpoints"))
    raise ValueError(f"checkpoint {ckpt_name!r} was not found in {folders}: put it there and refresh the node list (R)")


__all__ = ["ADDTurboLoader", "LoaderOptions", "checkpoint_choices", "load_turbo", "reload_patchers"]


class ADDTurboLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return turbo_schema(
            node_id="ADDTurboLoader",
            display_name="ADD Turbo Loader",
            description="Loads an SD-Turbo or SDXL-Turbo checkpoint (single file or diffusers folder) configured "
                        "for turbo sampling: epsilon prediction, sizes read from the file.",
            inputs=[
                io.Combo.Input("ckpt_name", options=checkpoint_choices(),
                               tooltip="A single-file SD-Turbo (sd_turbo.safetensors) or SDXL-Turbo "
                                       "(sd_xl_turbo_1.0[_fp16].safetensors) from models/checkpoints, or a "
                                       "'[diffusers] ' snapshot folder from models/diffusers."),
                io.Combo.Input("weight_dtype", options=list(precision.WEIGHT_DTYPES), default="auto", optional=True,
                               tooltip="Precision. auto: fp32 on CPU (exact), the host's choice on GPU. fast: the "
                                       "fastest for this machine: bf16 on a CPU with AMX units (slightly different "
                                       "images), fp32 on other CPUs (bf16 computes slower there), "
                                       "the host's choice on GPU. bf16 on CPU computes the UNet, VAE and text "
                                       "encoder in bf16. fp16 picks the snapshot's fp16 variant. fp8_e4m3fn: "
                                       "UNet weights in fp8 (a quarter of fp32's memory, slightly different "
                                       "images); on NVIDIA GPUs with fp8 units (Ada, Hopper and later) its linear "
                                       "layers run as fp8 matmuls, elsewhere each layer is cast up on every step "
                                       "(slower than fp32 on CPU: a memory saver there)."),
                io.Combo.Input("decoder", options=list(DECODERS), default="full", optional=True,
                               tooltip="full: the checkpoint's VAE. taesd: the tiny TAESD/TAESDXL autoencoder from "
                                       "models/vae_approx, much cheaper to decode with a small loss of detail."),
                io.Combo.Input("attention", options=list(ATTENTIONS), default="sdpa", optional=True,
                               tooltip="sdpa: PyTorch scaled-dot-product attention in the UNet and VAE, deterministic "
                                       "(one seed, one image, whatever the free memory) and fast. host: whatever "
                                       "ComfyUI picked (on CPU its memory-dependent sub-quadratic attention)."),
                io.Boolean.Input("channels_last", default=True, optional=True,
                                 tooltip="Store the UNet and VAE conv weights channels-last (NHWC), the layout fast "
                                         "convolution kernels prefer: faster on CPU in fp32. Same arithmetic in another "
                                         "order (images within a rounding step). Off: the host's layout."),
                io.Combo.Input("compile", options=list(compiling.COMPILE_MODES), default="off", optional=True,
                               tooltip="torch.compile the UNet and the text encoder layers. The loader runs a "
                                       "512x512 warm-up and reports its time; another image size or batch compiles "
                                       "once more on its first run. Compiled graphs are kept on disk (user/__cache/"
                                       "add_turbo_compile, or ADD_TURBO_COMPILE_CACHE), per checkpoint and options: "
                                       "the next start loads them instead of generating code again (it still traces the "
                                       "model, so a second start takes a fraction of the first). "
                                       "'+ cuda graphs' replays each UNet call as one CUDA graph (GPU only)."),
                io.Combo.Input("engine", options=list(ENGINE_MODES), default="off", optional=True,
                               tooltip="on: sample without the host's per-step machinery (conditioning copies, "
                                       "memory checks, guider), same result. On a CUDA GPU the steps are recorded "
                                       "as one CUDA graph per batch, size and steps (static buffers, replayed; "
                                       "the 512x512 one during a warm-up at load), and the text encoders' "
                                       "layers and TAESD's decode as one per input size; on CPU the same direct path "
                                       "runs without recording, its conv layers over weights packed once for "
                                       "oneDNN where that gives the same bits (faster, more memory: the node "
                                       "says how much), and TAESD's blocks with their ReLUs and skip adds fused "
                                       "into the convolutions (same bits). Anything it cannot run (LoRA or other patches, "
                                       "hooks, ControlNet, masks, areas, sizes not a multiple of 64 px on CUDA) "
                                       "takes the normal path, with the reason in the log."),
                io.Combo.Input("cpu_backend", options=list(CPU_BACKENDS), default="torch", optional=True,
                               tooltip=backends.CPU_BACKEND_TOOLTIP),
            ],
            outputs=[
                io.Model.Output(tooltip="The turbo UNet, epsilon prediction."),
                io.Clip.Output(tooltip="The text encoder(s): OpenCLIP-H, or CLIP-L + OpenCLIP-bigG."),
                io.Vae.Output(tooltip="The checkpoint's VAE, or TAESD with decoder 'taesd'."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, ckpt_name, decoder="full", **options):
        """What the files under these names are now: for each, (path, size, modification time, inode).

        The loaded model maps its file. A file replaced under the same name, whether copied over it (same
        inode, rewritten in place) or renamed onto it, makes the host run this node again, so the next
        run loads the new file instead of reading the replaced pages (a mix of two models, or SIGBUS
        where the new file is shorter). A name that no longer resolves runs it again too: it says so.
        """
        try:
            files = [_resolve(ckpt_name)]
        except ValueError:
            return ("missing", ckpt_name)
        if decoder == "taesd":
            files += [f for family in weights.TAESD_NAMES for f in (weights.taesd_file(family, "decoder"),
                                                                    weights.taesd_file(family, "encoder")) if f]
        try:
            return [(*entry, os.stat(entry[0]).st_ino) for f in files for entry in compile_cache.checkpoint_identity(f)]
        except OSError as error:  # replaced or deleted between the two looks: the node runs and says why
            return ("unreadable", str(error))

    @classmethod
    def execute(cls, ckpt_name, weight_dtype="auto", decoder="full", attention="sdpa", channels_last=True,
                compile="off", engine="off", cpu_backend="torch") -> io.NodeOutput:
        path = _resolve(ckpt_name)
        device = mm.get_torch_device()
        options = LoaderOptions(weight_dtype, decoder, attention, channels_last, compile, engine, cpu_backend)
        messages = []
        # An engine that sets the precision states it in its warm-up; else "fast" is resolved here and said.
        if not backends.check(options, device) and weight_dtype in precision.WEIGHT_DTYPES:
            resolved, note = precision.resolve(weight_dtype, device)  # else load_turbo refuses it, naming the choices
            options = options.replace(weight_dtype=resolved)
            if note:
                messages.append(note)
                log.info("ADD Turbo: %s", note)
        # What the editor shows above the node, as data: the warm-up's kind and seconds (None: none ran).
        shown = {"warm_up": None, "warm_up_s": None}
        if compile == "off":
            model, clip, vae, _ = load_turbo(path, options)
        else:
            # The decoder and the engine are not compiled: switching them must not compile the UNet again.
            cache = compile_cache.for_checkpoint(path, {"weight_dtype": options.weight_dtype, "attention": attention,
                                                        "channels_last": channels_last, "compile": compile})
            with compiling.caching_into(cache):
                model, clip, vae, _ = load_turbo(path, options)
            message, shown["warm_up_s"] = compile_warm_up(model, clip, vae, compile, cache)
            messages.append(message)
            shown["warm_up"] = "compile"
        for label, message, seconds in backends.warm_up(model, clip, vae, options):
            messages.append(message)
            shown.update(warm_up=label, warm_up_s=seconds)
        if engine == "on":  # after another warm-up (which sampled through the engine) its status says enough
            if shown["warm_up"] is None:
                message, shown["warm_up_s"] = engine_warm_up(model, clip, vae)
                messages.append(message)
                shown["warm_up"] = "engine"
            else:
                messages.append(engine_status(model))
            if (note := cpu_kernels.note(vae)) is not None:
                messages.append(note)
        if not messages:
            return io.NodeOutput(model, clip, vae)
        text = "; ".join(messages)
        return io.NodeOutput(model, clip, vae, ui={"text": [text], "add_turbo": [{**shown, "message": text}]})
