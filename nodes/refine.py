"""ADDTurboRefine: image-to-image refinement of an IMAGE batch in 1-4 steps with continuous strength."""

import torch
from comfy_api.v0_0_2 import io

from ..add_turbo import refine
from .latent_sampling import sample_latent
from .sampling import SEED_MAX, sampler_inputs, schedule_inputs
from .schema import turbo_schema

HOST_SYMBOLS = [
    ("comfy_api.v0_0_2", "io.ComfyNode.define_schema", ()),
    ("comfy_api.v0_0_2", "io.ComfyNode.execute", ()),
    ("comfy_api.v0_0_2", "io.Model.Input", ("id", "tooltip")),
    ("comfy_api.v0_0_2", "io.Vae.Input", ("id", "tooltip")),
    ("comfy_api.v0_0_2", "io.Conditioning.Input", ("id", "tooltip")),
    ("comfy_api.v0_0_2", "io.Image.Input", ("id", "tooltip")),
    ("comfy_api.v0_0_2", "io.Int.Input", ("id", "default", "min", "max", "control_after_generate", "tooltip")),
    ("comfy_api.v0_0_2", "io.Mask.Input", ("id", "optional", "tooltip")),
    ("comfy_api.v0_0_2", "io.Image.Output", ("tooltip",)),
    ("comfy_api.v0_0_2", "io.NodeOutput", ()),
]
FEATHER_PX = 8


def _pad_multiple(model) -> int:
    """Pixels per UNet grid cell: the VAE's 8 times 2 per UNet downsampling level."""
    levels = len(model.model.model_config.unet_config.get("channel_mult", [1, 2, 4, 4]))
    return 8 * 2 ** (levels - 1)


def _sized(positive, width: int, height: int):
    """SDXL size conditioning for the image's own size, not the padded one (as diffusers' img2img),
    unless the conditioning already has sizes (CLIPTextEncodeSDXL). Other models ignore it."""
    return [[cond, {"width": width, "height": height, **extra}] for cond, extra in positive]


class ADDTurboRefine(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return turbo_schema(
            node_id="ADDTurboRefine",
            display_name="ADD Turbo Refine",
            description="Refines an image (or a batch) in 1-4 guidance-free steps: encode, noise to the strength, "
                        "sample, decode. Any size (padded and cropped back), alpha kept, optional soft mask.",
            inputs=[
                io.Model.Input("model", tooltip="A turbo model from ADD Turbo Loader."),
                io.Vae.Input("vae", tooltip="The VAE that encodes the image and decodes the result."),
                io.Conditioning.Input("positive", tooltip="The prompt that steers the refinement."),
                io.Image.Input("image", tooltip=f"The image(s) to refine, {refine.MIN_SIDE} to {refine.MAX_SIDE} px a "
                                                "side; RGBA keeps its alpha."),
                io.Int.Input("seed", default=0, min=0, max=SEED_MAX, control_after_generate=True,
                             tooltip="Noise seed; image k of a batch uses seed + k."),
                *schedule_inputs(),
                *sampler_inputs(),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional: only the masked (white) pixels change, with a soft inner edge."),
            ],
            outputs=[io.Image.Output(tooltip="The refined image, exactly the input's size.")],
        )

    @classmethod
    def execute(cls, model, vae, positive, image, seed, steps, strength, spacing, sampler, eta, mask=None) -> io.NodeOutput:
        refine.check_image(image)
        batch, height, width, channels = image.shape
        weight = None if mask is None else refine.soft_mask(mask, batch, height, width, FEATHER_PX)
        rgb = image[..., :3]
        padded, size = refine.pad_to_multiple(rgb, _pad_multiple(model))
        latent = vae.encode(padded)
        positive = _sized(positive, width, height)
        samples = sample_latent(model, positive, latent, seed, steps, strength, spacing, sampler, eta)
        refined = refine.crop_to(vae.decode(samples), size).to(rgb)
        if weight is not None:
            refined = refine.blend(rgb, refined, weight.to(rgb))
        if channels == 4:
            refined = torch.cat([refined, image[..., 3:]], dim=-1)
        return io.NodeOutput(refined)
