"""ADDTurboLoader: a turbo checkpoint (single file or diffusers folder) -> MODEL, CLIP, VAE.

Everything is built with the host's own classes (through host_api/); the core package decides the
family and the sizes.
"""

import logging
import os

import comfy.model_detection
import comfy.model_management as mm
import comfy.utils
import folder_paths
from comfy_api.latest import io

from ..add_turbo import checkpoints, diffusers_folders
from ..add_turbo.acceleration import openvino_models
from ..add_turbo.checkpoints import CheckpointError
from . import compile_cache, compiling, host_api, openvino_cache, precision, weights
from .convert import folder_state_dict
from .engine import ENGINE_MODES, set_engine
from .engine import status as engine_status
from .schema import turbo_schema
from .warm_up import compile_warm_up, engine_warm_up, openvino_warm_up

log = logging.getLogger(__name__)

DIFFUSERS_TAG = "[diffusers] "
DECODERS = ("full", "taesd")
CPU_BACKENDS = ("torch", "openvino")
OPENVINO_TOOLTIP = (
    "What runs the UNet, the text encoders and TAESD's decode on a CPU. torch: PyTorch. openvino: Intel's "
    "OpenVINO runtime, converted once per image size and kept on disk (user/__cache/add_turbo_openvino, or "
    "ADD_TURBO_OPENVINO_CACHE). weight_dtype picks its precision: fast = bf16 on CPUs with bf16 units "
    "(avx512_bf16 or AMX; slightly different images), f32 elsewhere; auto / fp32 = f32. LoRAs, ControlNet "
    "and other patches run in torch (the log says why). Needs the openvino package: pip install "
    "\"add-turbo[openvino]\", or pip install openvino in ComfyUI's Python.")
ATTENTIONS = ("sdpa", "host")


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


def _check_openvino(load_device, compile_mode) -> None:
    """Refuse cpu_backend openvino where it cannot run, with the fix."""
    if load_device.type != "cpu":
        raise ValueError(f"cpu_backend 'openvino' runs the UNet on the CPU, and this ComfyUI computes on "
                         f"{load_device.type}: choose cpu_backend 'torch'")
    if compile_mode != "off":
        raise ValueError("compile and cpu_backend 'openvino' both replace the UNet: set compile to 'off'")
    if (why := openvino_models.missing()) is not None:
        raise RuntimeError(f"cpu_backend 'openvino': {why}")


def _check_options(weight_dtype, decoder, attention, compile_mode, load_device) -> None:
    if weight_dtype not in precision.WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype must be one of {list(precision.WEIGHT_DTYPES)}, got {weight_dtype!r}")
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
    compiling.check_compile(compile_mode, load_device)


def load_turbo(path: str, weight_dtype: str = "auto", decoder: str = "full", attention: str = "sdpa",
               channels_last: bool = True, compile_mode: str = "off", engine: str = "off", cpu_backend: str = "torch"):
    """Load an SD-Turbo / SDXL-Turbo single file or diffusers folder.

    Returns:
        (ModelPatcher, CLIP, VAE, CheckpointInfo). The CLIP caches the prompts it encoded; with
        compile_mode other than "off" the UNet is compiled at its first sampling run; with engine
        "on" the MODEL (and its clones) samples through nodes/engine/ where it can; with cpu_backend
        "openvino" the UNet runs on OpenVINO (host_api.openvino_unet) in the precision weight_dtype picks
        (precision.openvino_precision), its torch weights kept in fp32.
    Raises:
        CheckpointError: the file or folder is broken or not a turbo model (message names the fix).
    """
    load_device = mm.get_torch_device()
    _check_options(weight_dtype, decoder, attention, compile_mode, load_device)
    if cpu_backend not in CPU_BACKENDS:
        raise ValueError(f"cpu_backend must be one of {CPU_BACKENDS}, got {cpu_backend!r}")
    openvino_precision, requested_dtype = None, weight_dtype
    if cpu_backend == "openvino":
        _check_openvino(load_device, compile_mode)
        openvino_precision, _ = precision.openvino_precision(weight_dtype, openvino_models.cpu_flags())
        weight_dtype = "fp32"  # what OpenVINO converts; it computes in openvino_precision
    weight_dtype, _ = precision.resolve(weight_dtype, load_device)
    if engine not in ENGINE_MODES:
        raise ValueError(f"engine must be one of {ENGINE_MODES}, got {engine!r}")
    prefix = checkpoints.UNET_PREFIX
    if os.path.isdir(path):
        folder = diffusers_folders.inspect_folder(path, prefer_fp16=weight_dtype == "fp16")
        sd = folder_state_dict(folder)
        info = checkpoints.identify(path, {k: (tuple(v.shape), str(v.dtype)) for k, v in sd.items()})
        unet_sd = {k: sd.pop(k) for k in [k for k in sd if k.startswith(prefix)]}
    else:
        info = checkpoints.inspect_checkpoint(path)
        unet_sd = weights.read_tensors(path, lambda key: key.startswith(prefix), channels_last)
        sd = None  # read after the UNet, from a second mapping that is released once copied
    unet_config = comfy.model_detection.detect_unet_config(unet_sd, prefix)
    if info.family == checkpoints.SDXL_TURBO:
        model_config = host_api.TurboSDXL(unet_config)
        model_config.size_embed_dim = info.size_embed_dim
    else:
        model_config = host_api.TurboSD2(unet_config)

    unet_dtype, manual_cast = precision.unet_dtypes(weight_dtype, load_device, unet_sd, prefix, model_config)
    model_config.set_inference_dtype(unet_dtype, manual_cast)
    model = weights.build_unet(path, model_config, unet_sd, prefix, unet_dtype)
    patcher = host_api.new_model_patcher(model, load_device, mm.unet_offload_device())
    if attention == "sdpa":
        host_api.use_sdpa_in_unet(patcher)
    if sd is None:
        sd = weights.read_tensors(path, lambda key: not key.startswith(prefix))

    bf16 = precision.cpu_bf16(weight_dtype, load_device)
    vae_dtype = precision.WEIGHT_DTYPES["bf16"] if bf16 else None
    if decoder == "taesd":
        vae = weights.taesd(info.family, vae_dtype)
    else:
        vae_sd = comfy.utils.state_dict_prefix_replace(sd, {checkpoints.VAE_PREFIX: ""}, filter_keys=True)
        vae = host_api.TurboVAE(sd=vae_sd, config={"params": info.vae}, dtype=vae_dtype)
        del vae_sd
        if attention == "sdpa":
            host_api.use_sdpa_in_vae(vae)

    clip_sd = model_config.process_clip_state_dict(sd)
    te_options = {f"{spec.name}_model_config": spec.config_overrides() for spec in info.text_encoders}
    if (te_dtype := precision.text_encoder_dtype(weight_dtype, load_device)) is not None:
        te_options["dtype"] = te_dtype
    clip = host_api.CachedTextCLIP(model_config.clip_target(state_dict=sd), tokenizer_data=clip_sd,
                                   embedding_directory=folder_paths.get_folder_paths("embeddings"),
                                   parameters=comfy.utils.calculate_parameters(clip_sd), model_options=te_options,
                                   **host_api.clip_options())
    missing, _ = clip.load_sd(clip_sd, full_model=True)
    missing = [k for k in missing if ".logit_scale" not in k and "text_projection" not in k]
    if missing:
        raise CheckpointError(path, f"the text encoder is incomplete ({len(missing)} tensors missing, e.g. {missing[0]})",
                              "The file is damaged: download it again")
    del sd, clip_sd
    if bf16:
        host_api.compute_text_encoders_in(clip, te_dtype)
    if channels_last:
        host_api.use_channels_last(patcher, vae)
    if compile_mode != "off":
        host_api.compile_unet(patcher, compile_mode)
        host_api.compile_text_encoders(clip, compile_mode)
    if openvino_precision is not None:
        _use_openvino(path, info.family, patcher, clip, vae, openvino_precision, decoder, attention, channels_last)
    set_engine(patcher, engine)
    if engine == "on":
        host_api.fuse_taesd_blocks(vae)
        host_api.graph_taesd_decode(vae)
        host_api.graph_text_encoders(clip)
    options = (requested_dtype if openvino_precision else weight_dtype, decoder, attention, channels_last,
               compile_mode, engine, cpu_backend)
    host_api.register_reload(reload_patchers, (path, *options), patcher, clip, vae)
    log.info("ADD Turbo: loaded %s as %s (UNet %s, decoder %s)", path, info.family_name, unet_dtype, decoder)
    return patcher, clip, vae, info


def _use_openvino(path, family, patcher, clip, vae, openvino_precision, decoder, attention, channels_last) -> None:
    """The UNet, the text encoders' layer stacks and TAESD's decode on OpenVINO; each converted model is
    kept on disk under the identity of the file its weights come from."""
    where = openvino_cache.for_checkpoint(path, {"attention": attention, "channels_last": channels_last,
                                                 "unet_graph": host_api.openvino_unet.GRAPH_REVISION})
    host_api.use_openvino_unet(patcher, where.folder, openvino_precision, where.blobs)
    host_api.use_openvino_text_encoders(clip, where.folder, openvino_precision, where.blobs)
    if decoder == "taesd":
        taesd_where = openvino_cache.for_checkpoint(weights.taesd_file(family, "decoder"), {"taesd": family})
        host_api.use_openvino_taesd(vae, taesd_where.folder, openvino_precision, taesd_where.blobs)


def reload_patchers(path, *options, disable_dynamic=False):
    """The models loaded afresh, as [MODEL patcher, CLIP patcher, VAE patcher]: the host's
    cached_patcher_init factory. The UNet and CLIP patchers are never dynamic, so `disable_dynamic`
    holds for them; the VAE's is the host's own choice (dynamic on GPUs with dynamic VRAM), as with
    the host's own checkpoint loader."""
    model, clip, vae, _ = load_turbo(path, *options)
    return [model, clip.patcher, vae.patcher]


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
                               tooltip=OPENVINO_TOOLTIP),
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
        dtype_note = ""
        if cpu_backend == "openvino":  # load_turbo checks the rest and refuses what cannot run
            _check_openvino(mm.get_torch_device(), compile)
            _, dtype_note = precision.openvino_precision(weight_dtype, openvino_models.cpu_flags())
        elif weight_dtype in precision.WEIGHT_DTYPES:  # else load_turbo refuses it, naming the choices
            weight_dtype, dtype_note = precision.resolve(weight_dtype, mm.get_torch_device())
        messages = [dtype_note] if dtype_note else []
        if dtype_note:
            log.info("ADD Turbo: %s", dtype_note)
        options = (weight_dtype, decoder, attention, channels_last, compile, engine, cpu_backend)
        # What the editor shows above the node, as data: the warm-up's kind and seconds (None: none ran).
        shown = {"warm_up": None, "warm_up_s": None}
        if compile == "off":
            model, clip, vae, _ = load_turbo(path, *options)
        else:
            # The decoder and the engine are not compiled: switching them must not compile the UNet again.
            cache = compile_cache.for_checkpoint(path, {"weight_dtype": weight_dtype, "attention": attention,
                                                        "channels_last": channels_last, "compile": compile})
            with compiling.caching_into(cache):
                model, clip, vae, _ = load_turbo(path, *options)
            message, shown["warm_up_s"] = compile_warm_up(model, clip, vae, compile, cache)
            messages.append(message)
            shown["warm_up"] = "compile"
        if cpu_backend == "openvino":  # its warm-up states the precision: the note would say it twice
            messages.remove(dtype_note)
            message, shown["warm_up_s"] = openvino_warm_up(model, clip, vae, dtype_note)
            messages.append(message)
            shown["warm_up"] = "OpenVINO"
        if engine == "on":  # after a compile warm-up (which sampled through the engine) its status says enough
            if compile == "off" and cpu_backend == "torch":
                message, shown["warm_up_s"] = engine_warm_up(model, clip, vae)
                messages.append(message)
                shown["warm_up"] = "engine"
            else:
                messages.append(engine_status(model))
            if vae.fused_blocks is not None and mm.get_torch_device().type == "cpu" and vae.openvino_decode is None:
                messages.append("TAESD blocks run as fused oneDNN convolutions (ReLU and skip add inside)")
        if not messages:
            return io.NodeOutput(model, clip, vae)
        text = "; ".join(messages)
        return io.NodeOutput(model, clip, vae, ui={"text": [text], "add_turbo": [{**shown, "message": text}]})

