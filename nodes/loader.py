"""ADDTurboLoader: a turbo checkpoint -> MODEL, CLIP, VAE built with the host's own classes."""

import logging

import comfy.model_detection
import comfy.model_management as mm
import comfy.model_patcher
import comfy.sd
import comfy.utils
import folder_paths
from comfy_api.latest import io

from ..add_turbo import checkpoints
from .turbo_models import TurboSD2, TurboSDXL, text_encoder_dtype

log = logging.getLogger(__name__)


def load_turbo_checkpoint(path: str):
    """Load an SD-Turbo / SDXL-Turbo single file. Returns (ModelPatcher, CLIP, VAE, CheckpointInfo).

    The family and every size come from the header (core.checkpoints), so smaller distilled
    variants load too; the host's detection of fixed configs is not consulted.
    """
    info = checkpoints.inspect_checkpoint(path)
    sd = comfy.utils.load_torch_file(path, safe_load=True)
    prefix = checkpoints.UNET_PREFIX
    unet_config = comfy.model_detection.detect_unet_config(sd, prefix)
    if info.family == checkpoints.SDXL_TURBO:
        model_config = TurboSDXL(unet_config)
        model_config.size_embed_dim = info.size_embed_dim
    else:
        model_config = TurboSD2(unet_config)

    load_device = mm.get_torch_device()
    parameters = comfy.utils.calculate_parameters(sd, prefix)
    unet_dtype = mm.unet_dtype(model_params=parameters, supported_dtypes=model_config.supported_inference_dtypes,
                               weight_dtype=comfy.utils.weight_dtype(sd, prefix))
    model_config.set_inference_dtype(unet_dtype, mm.unet_manual_cast(unet_dtype, load_device,
                                                                     model_config.supported_inference_dtypes))
    model = model_config.get_model(sd, prefix, device=mm.unet_inital_load_device(parameters, unet_dtype))
    model.load_model_weights(sd, prefix)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=mm.unet_offload_device())

    vae_sd = comfy.utils.state_dict_prefix_replace(sd, {checkpoints.VAE_PREFIX: ""}, filter_keys=True)
    vae = comfy.sd.VAE(sd=vae_sd, config={"params": info.vae})

    clip_sd = model_config.process_clip_state_dict(sd)
    te_options = {f"{spec.name}_model_config": spec.config_overrides() for spec in info.text_encoders}
    if (dtype := text_encoder_dtype(load_device)) is not None:
        te_options["dtype"] = dtype
    clip = comfy.sd.CLIP(model_config.clip_target(state_dict=sd), tokenizer_data=clip_sd,
                         embedding_directory=folder_paths.get_folder_paths("embeddings"),
                         parameters=comfy.utils.calculate_parameters(clip_sd), model_options=te_options)
    missing, _ = clip.load_sd(clip_sd, full_model=True)
    missing = [k for k in missing if ".logit_scale" not in k and "text_projection" not in k]
    if missing:
        raise checkpoints.CheckpointError(path, f"the text encoder is incomplete ({len(missing)} tensors missing, "
                                          f"e.g. {missing[0]})", "The file is damaged: download it again")
    log.info("ADD Turbo: loaded %s as %s", path, info.family_name)
    return patcher, clip, vae, info


class ADDTurboLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ADDTurboLoader",
            display_name="ADD Turbo Loader",
            category="ADD Turbo",
            description="Loads an SD-Turbo or SDXL-Turbo checkpoint configured for turbo sampling: epsilon "
                        "prediction, 512 px size conditioning, sizes read from the file.",
            inputs=[
                io.Combo.Input("ckpt_name", options=folder_paths.get_filename_list("checkpoints"),
                               tooltip="A single-file SD-Turbo (sd_turbo.safetensors) or SDXL-Turbo "
                                       "(sd_xl_turbo_1.0[_fp16].safetensors) checkpoint from models/checkpoints."),
            ],
            outputs=[
                io.Model.Output(tooltip="The turbo UNet, epsilon prediction."),
                io.Clip.Output(tooltip="The text encoder(s): OpenCLIP-H, or CLIP-L + OpenCLIP-bigG."),
                io.Vae.Output(tooltip="The checkpoint's VAE."),
            ],
        )

    @classmethod
    def execute(cls, ckpt_name) -> io.NodeOutput:
        path = folder_paths.get_full_path("checkpoints", ckpt_name)
        if path is None:
            raise ValueError(f"checkpoint {ckpt_name!r} is not in the checkpoints folder "
                             f"({', '.join(folder_paths.get_folder_paths('checkpoints'))}): put the file there "
                             "and refresh the node list")
        model, clip, vae, _ = load_turbo_checkpoint(path)
        return io.NodeOutput(model, clip, vae)
