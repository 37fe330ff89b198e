"""Safe checkpoint inspection: read a safetensors header, tell the model family, derive configs.

Only the header is parsed (by the safetensors library, which never runs code from the file), so a
wrong or broken file is refused before any weight is read. Errors name the file, what was found
and what to do.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field

from .memory import parameter_counts

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD_TURBO = "sd_turbo"
SDXL_TURBO = "sdxl_turbo"
FAMILY_NAMES = {SD_TURBO: "SD-Turbo (SD 2.x)", SDXL_TURBO: "SDXL-Turbo (SDXL)"}
HEAD_DIM = 64  # every real SD2/SDXL text tower uses 64-wide heads; not readable from shapes
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")


class CheckpointError(ValueError):
    """A checkpoint this pack cannot load; the message says why and what to do."""

    def __init__(self, path: str, problem: str, fix: str):
        self.path, self.problem, self.fix = path, problem, fix
        super().__init__(f"{os.path.basename(path)}: {problem}. {fix}")


@dataclass(frozen=True)
class TextEncoderSpec:
    """Shape-derived config of one CLIP text tower, in the host's config key names."""

    name: str  # "clip_h" (SD-Turbo), "clip_l" and "clip_g" (SDXL-Turbo)
    prefix: str  # key prefix inside the single file
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    projection_dim: int
    vocab_size: int
    max_position_embeddings: int

    def config_overrides(self) -> dict:
        """The config entries that differ between model sizes (keys as in CLIP's config.json)."""
        return {
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_attention_heads": max(self.hidden_size // HEAD_DIM, 1),
            "num_hidden_layers": self.num_hidden_layers,
            "projection_dim": self.projection_dim,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_position_embeddings,
        }


@dataclass(frozen=True)
class CheckpointInfo:
    """What a turbo checkpoint holds, from its header alone."""

    path: str
    family: str  # SD_TURBO or SDXL_TURBO
    text_encoders: tuple[TextEncoderSpec, ...]
    context_dim: int
    size_embed_dim: int = 0  # SDXL: width of each of the 6 size/crop embeddings (256 in SDXL)
    vae: dict = field(default_factory=dict)  # see vae_layout()
    dtypes: tuple[str, ...] = field(default_factory=tuple)
    parameters: dict = field(default_factory=dict)  # "unet", "text", "vae" -> parameter count (memory.parameter_counts)

    @property
    def family_name(self) -> str:
        return FAMILY_NAMES[self.family]


def read_header(path: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """Map each tensor name of a .safetensors file to (shape, dtype) without reading the weights."""
    from safetensors import SafetensorError, safe_open

    if not os.path.isfile(path):
        raise CheckpointError(path, "the file does not exist or is not a file", "Check the path and the file name")
    if path.lower().endswith(PICKLE_SUFFIXES):
        raise CheckpointError(
            path,
            "this is a pickle-based checkpoint, which can run code when loaded and is never unpickled here",
            "Convert it to .safetensors or download the .safetensors release",
        )
    try:
        size = os.path.getsize(path)
        if size < 8:
            raise CheckpointError(path, f"the file is {size} bytes, too short for a safetensors file",
                                  "The download is incomplete: download it again")
        with safe_open(path, framework="pt") as handle:
            return {name: (tuple(handle.get_slice(name).get_shape()), handle.get_slice(name).get_dtype())
                    for name in handle.keys()}
    except SafetensorError as error:
        raise CheckpointError(
            path, f"not a valid safetensors file ({error})",
            "The file is truncated, corrupt or not a safetensors checkpoint: download it again",
        ) from error
    except OSError as error:
        raise CheckpointError(path, f"the file cannot be read ({error.strerror or error})",
                              "Check the file's permissions and that the disk is readable") from error


def _layer_count(keys: set[str], pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for k in keys if (m := regex.match(k))})


def _open_clip_spec(header, name: str, prefix: str) -> TextEncoderSpec:
    vocab, hidden = header[f"{prefix}token_embedding.weight"][0]
    inter = header[f"{prefix}transformer.resblocks.0.mlp.c_fc.weight"][0][0]
    layers = _layer_count(set(header), re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.")
    proj = header.get(f"{prefix}text_projection", ((hidden, hidden), ""))[0][-1]
    positions = header[f"{prefix}positional_embedding"][0][0]
    return TextEncoderSpec(name, prefix, hidden, inter, layers, proj, vocab, positions)


def _hf_clip_spec(header, name: str, prefix: str) -> TextEncoderSpec:
    vocab, hidden = header[f"{prefix}text_model.embeddings.token_embedding.weight"][0]
    inter = header[f"{prefix}text_model.encoder.layers.0.mlp.fc1.weight"][0][0]
    layers = _layer_count(set(header), re.escape(prefix) + r"text_model\.encoder\.layers\.(\d+)\.")
    proj = header.get(f"{prefix}text_projection.weight", ((hidden, hidden), ""))[0][0]
    positions = header[f"{prefix}text_model.embeddings.position_embedding.weight"][0][0]
    return TextEncoderSpec(name, prefix, hidden, inter, layers, proj, vocab, positions)


def vae_layout(header, prefix: str = VAE_PREFIX) -> dict:
    """KL-VAE layout from shapes, as (ldm) ddconfig keys: ch, ch_mult, num_res_blocks, z_channels.

    Returns:
        {"ddconfig": {...}, "embed_dim": int}; the real SD VAE gives ch 128, ch_mult [1, 2, 4, 4],
        num_res_blocks 2, z_channels 4.
    """
    keys = set(header)
    ch = header[f"{prefix}encoder.conv_in.weight"][0][0]
    levels = _layer_count(keys, re.escape(prefix) + r"encoder\.down\.(\d+)\.")
    ch_mult = [header[f"{prefix}encoder.down.{i}.block.0.conv1.weight"][0][0] // ch for i in range(levels)]
    res_blocks = _layer_count(keys, re.escape(prefix) + r"encoder\.down\.0\.block\.(\d+)\.")
    z_channels = header[f"{prefix}decoder.conv_in.weight"][0][1]
    ddconfig = {"double_z": True, "z_channels": z_channels, "resolution": 256, "in_channels": 3, "out_ch": 3,
                "ch": ch, "ch_mult": ch_mult, "num_res_blocks": res_blocks, "attn_resolutions": [], "dropout": 0.0}
    return {"ddconfig": ddconfig, "embed_dim": header[f"{prefix}post_quant_conv.weight"][0][1]}


def _has_prefix(keys, prefix: str) -> bool:
    return any(k.startswith(prefix) for k in keys)


def _refuse_other_kinds(path: str, keys: set[str]) -> None:
    """Raise a CheckpointError naming what the file is when it is no SD2/SDXL full checkpoint."""
    builtin = "Use the built-in Load Checkpoint node (or the matching loader) for it"
    if any("lora_" in k or ".lora_down." in k or ".lora_A." in k for k in keys):
        raise CheckpointError(path, "this is a LoRA file, not a checkpoint",
                              "Load a full SD-Turbo / SDXL-Turbo checkpoint here and apply the LoRA with Load LoRA")
    if _has_prefix(keys, UNET_PREFIX + "joint_blocks.") or _has_prefix(keys, "joint_blocks."):
        raise CheckpointError(path, "this is a Stable Diffusion 3 checkpoint", builtin)
    if _has_prefix(keys, UNET_PREFIX + "double_blocks.") or _has_prefix(keys, "double_blocks."):
        raise CheckpointError(path, "this is a Flux checkpoint", builtin)
    if {"encoder.conv_in.weight", "decoder.conv_in.weight"} <= keys or (
        keys and all(k.startswith(VAE_PREFIX) for k in keys)
    ):
        raise CheckpointError(path, "this is a VAE file, not a full checkpoint",
                              "Load the full SD-Turbo / SDXL-Turbo checkpoint here (it includes its VAE)")
    if "input_blocks.0.0.weight" in keys or "conv_in.weight" in keys:
        raise CheckpointError(path, "this is a UNet-only file without text encoder or VAE",
                              "Use the full single-file checkpoint (sd_turbo.safetensors / sd_xl_turbo_1.0.safetensors)"
                              " or a complete diffusers folder")
    if not keys:
        raise CheckpointError(path, "the file holds no tensors", "The download is incomplete: download it again")
    raise CheckpointError(path, "no Stable Diffusion UNet found in this file",
                          "Choose an SD-Turbo or SDXL-Turbo checkpoint")


def inspect_checkpoint(path: str) -> CheckpointInfo:
    """Identify an SD-Turbo / SDXL-Turbo single-file checkpoint from its header.

    Raises:
        CheckpointError: the file is unreadable, corrupt, or another kind of model; the message
        says what was found and what to do.
    """
    return identify(path, read_header(path))


def identify(path: str, header: dict[str, tuple[tuple[int, ...], str]]) -> CheckpointInfo:
    """`inspect_checkpoint` on an already read header ({name: (shape, dtype)}, original key layout)."""
    return dataclasses.replace(_identify(path, header), parameters=parameter_counts(header))


def _identify(path: str, header: dict) -> CheckpointInfo:
    keys = set(header)
    if f"{UNET_PREFIX}input_blocks.0.0.weight" not in keys:
        _refuse_other_kinds(path, keys)
    in_channels = header[f"{UNET_PREFIX}input_blocks.0.0.weight"][0][1]
    if in_channels != 4:
        raise CheckpointError(path, f"the UNet takes {in_channels} input channels (an inpainting or other "
                              "special model), turbo models take 4", "Use the built-in Load Checkpoint node for it")
    if not _has_prefix(keys, VAE_PREFIX):
        raise CheckpointError(path, "the checkpoint has no VAE (first_stage_model.*)",
                              "Use the complete single-file release, which includes the VAE")
    context_keys = [k for k in keys if k.startswith(UNET_PREFIX) and k.endswith("attn2.to_k.weight")]
    context_dim = header[context_keys[0]][0][1] if context_keys else 0
    dtypes = tuple(sorted({dtype for _, dtype in header.values()}))

    if _has_prefix(keys, "cond_stage_model.transformer.text_model.") or _has_prefix(keys, "cond_stage_model.transformer.text_model"):
        raise CheckpointError(path, "this is an SD 1.x checkpoint (CLIP-L text encoder, not a turbo model)",
                              "Use the built-in Load Checkpoint node for it")
    if _has_prefix(keys, "cond_stage_model.model.transformer.resblocks."):
        if f"{UNET_PREFIX}label_emb.0.0.weight" in keys:
            raise CheckpointError(path, "this is an SD 2.1 unCLIP checkpoint", "Use the built-in Load Checkpoint node for it")
        clip_h = _open_clip_spec(header, "clip_h", "cond_stage_model.model.")
        return CheckpointInfo(path, SD_TURBO, (clip_h,), context_dim, vae=vae_layout(header), dtypes=dtypes)
    clip_l_prefix, clip_g_prefix = "conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."
    if _has_prefix(keys, clip_g_prefix + "transformer.resblocks.") and _has_prefix(keys, clip_l_prefix + "text_model."):
        clip_l = _hf_clip_spec(header, "clip_l", clip_l_prefix)
        clip_g = _open_clip_spec(header, "clip_g", clip_g_prefix)
        adm_in = header[f"{UNET_PREFIX}label_emb.0.0.weight"][0][1]
        size_embed_dim, remainder = divmod(adm_in - clip_g.projection_dim, 6)
        if remainder or size_embed_dim <= 0:
            raise CheckpointError(path, f"the UNet's size conditioning ({adm_in} inputs) does not fit the "
                                  f"{clip_g.projection_dim}-wide pooled text embedding", "The file is not a standard SDXL checkpoint")
        return CheckpointInfo(path, SDXL_TURBO, (clip_l, clip_g), context_dim, size_embed_dim,
                              vae_layout(header), dtypes)
    if _has_prefix(keys, "conditioner.embedders.0.model."):
        raise CheckpointError(path, "this is an SDXL refiner checkpoint (bigG text encoder only)",
                              "Use the built-in Load Checkpoint node for it")
    raise CheckpointError(path, "the checkpoint has a UNet but no text encoder this pack knows",
                          "Use the complete single-file SD-Turbo / SDXL-Turbo release, which includes its text encoders")
