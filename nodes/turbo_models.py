"""The host's model classes, configured for ADD-distilled models (epsilon, 512 px)."""

import torch
from comfy import model_base, supported_models
from comfy.ldm.modules.diffusionmodules.openaimodel import Timestep
from comfy.model_base import ModelType

TRAINING_SIZE = 512  # ADD trained both models at 512x512 (arXiv 2311.17042, Sec. 5)


class TurboSD2(supported_models.SD20):
    """SD 2.x layout, always epsilon: the host's v-prediction weight heuristic must not decide."""

    def model_type(self, state_dict, prefix=""):
        return ModelType.EPS


class TurboSDXLModel(model_base.SDXL):
    """SDXL with the size embedding width read from the checkpoint and 512 px size conditioning."""

    def __init__(self, model_config, size_embed_dim: int, device=None):
        super().__init__(model_config, model_type=ModelType.EPS, device=device)
        self.embedder = Timestep(size_embed_dim)

    def encode_adm(self, **kwargs):
        # Reference (Stability turbo demo, diffusers at 512): original = target = 512, crop (0, 0).
        sizes = {key: TRAINING_SIZE for key in ("width", "height", "target_width", "target_height")}
        return super().encode_adm(**{**kwargs, **sizes})


class TurboSDXL(supported_models.SDXL):
    size_embed_dim = 256

    def model_type(self, state_dict, prefix=""):
        return ModelType.EPS

    def get_model(self, state_dict, prefix="", device=None):
        return TurboSDXLModel(self, self.size_embed_dim, device=device)


def sdpa_attention(host_attention, *args, **kwargs):
    """Attention override: PyTorch SDPA, whatever the host picked.

    On CPU the host uses sub-quadratic attention whose chunking follows free memory, so one seed
    can give slightly different pixels as the process's memory changes; SDPA is deterministic for
    given shapes and faster there.
    """
    from comfy.ldm.modules.attention import attention_pytorch

    return attention_pytorch(*args, **kwargs)


def text_encoder_dtype(load_device: torch.device):
    """fp32 text encoders on CPU (fp16 there is slower and moves the image); host default elsewhere."""
    return torch.float32 if load_device.type == "cpu" else None


def use_sdpa_in_vae(vae) -> None:
    """The VAE's attention blocks through PyTorch SDPA, as `sdpa_attention` does for the UNet.

    On CPU the host picks split attention there, chunked by free memory; SDPA gives the same
    numbers whatever the memory (max 0.001/255 apart on a full-size SD VAE) at the same speed.
    """
    from comfy.ldm.modules.diffusionmodules import model as vae_model

    for module in vae.first_stage_model.modules():
        if isinstance(module, vae_model.AttnBlock):
            module.optimized_attention = vae_model.pytorch_attention
