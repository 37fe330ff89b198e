"""Random-weight SD-Turbo / SDXL-Turbo checkpoints of the real architectures: tiny ones for the tests
(`build`), full-size ones with the real layer sizes for the benchmarks (`build_full_size_sd21`, `full_size`).

Built deterministically (fixed seeds) with diffusers/transformers, saved as a diffusers folder and
as a single file in the original (Stability) key layout, and cached outside the repo. The single
file is converted from the diffusers weights with the host's own key maps, so both forms hold the
same numbers. Needs the host (ComfyUI) importable: call `host.init_in_process()` or put ComfyUI on
sys.path first.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .host import COMFY_DIR, HOME

FACTORY_VERSION = "2"
CACHE = Path(os.environ.get("ADD_TURBO_TEST_MODELS", HOME / "test-models" / f"v{FACTORY_VERSION}"))
TOKENIZER_DIR = COMFY_DIR / "comfy" / "sd1_tokenizer"
TEXT_HIDDEN = 64  # one 64-wide head, the convention of the real towers
BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


@dataclass(frozen=True)
class TurboModel:
    family: str  # "sd_turbo" or "sdxl_turbo"
    single_file: Path
    diffusers_dir: Path


def _clip_config(layers: int, act: str, hidden: int = TEXT_HIDDEN):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=4 * hidden,
                          num_hidden_layers=layers, num_attention_heads=hidden // 64, max_position_embeddings=77,
                          hidden_act=act, projection_dim=hidden)


def _vae(scaling_factor: float, seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=32,
                         block_out_channels=(32, 32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=scaling_factor, sample_size=64)


def _tokenizer(pad_token: str):
    from transformers import CLIPTokenizer

    return CLIPTokenizer(str(TOKENIZER_DIR / "vocab.json"), str(TOKENIZER_DIR / "merges.txt"), pad_token=pad_token, model_max_length=77)


def _scheduler(ancestral: bool):
    from diffusers import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler

    cls = EulerAncestralDiscreteScheduler if ancestral else EulerDiscreteScheduler
    return cls(**BETAS, prediction_type="epsilon", timestep_spacing="trailing")


def _prefixed(prefix: str, state_dict: dict) -> dict:
    return {prefix + k: v for k, v in state_dict.items()}


def _hf_text_keys(hf_state_dict: dict) -> dict:
    """HF CLIP text weights with the `text_model.` prefix that released checkpoints use.

    (Recent transformers drop the prefix from CLIPTextModel's own state dict.)
    """
    return {k if k.startswith(("text_model.", "text_projection.")) else "text_model." + k: v
            for k, v in hf_state_dict.items()}


def _open_clip_keys(hf_state_dict: dict) -> dict:
    """HF CLIP text weights -> OpenCLIP layout (fused qkv, resblocks, text_projection [hidden, proj])."""
    from comfy.diffusers_convert import convert_text_enc_state_dict_v20

    return convert_text_enc_state_dict_v20(_prefixed("transformer.", _hf_text_keys(hf_state_dict)))


def _unet_keys(unet) -> dict:
    from comfy.utils import unet_to_diffusers

    from add_turbo.diffusers_folders import unet_layout

    key_map = unet_to_diffusers(unet_layout(dict(unet.config)))
    state = unet.state_dict()
    missing = set(state) - set(key_map)
    if missing:
        raise RuntimeError(f"no original-layout key for {sorted(missing)[:5]}")
    return {"model.diffusion_model." + key_map[k]: v for k, v in state.items()}


def _vae_keys(vae) -> dict:
    from comfy.diffusers_convert import convert_vae_state_dict

    return _prefixed("first_stage_model.", convert_vae_state_dict(vae.state_dict()))


def _build_sd_turbo(full_size: bool = False):
    """SD-Turbo: tiny, or with the real SD 2.1 sizes (865M UNet) for load/speed measurements."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(1)
    if full_size:
        unet = UNet2DConditionModel(
            sample_size=64, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
            block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)
        text_config = dict(hidden=1024, layers=24)
    else:
        unet = UNet2DConditionModel(
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(64, 128),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=TEXT_HIDDEN, attention_head_dim=(1, 2), use_linear_projection=True, norm_num_groups=32)
        text_config = dict(hidden=TEXT_HIDDEN, layers=3)
    # OpenCLIP-H is used at its penultimate layer: the single file holds one more (unused) layer
    # than the diffusers text encoder, exactly as in Stability's sd_turbo vs. its diffusers snapshot.
    torch.manual_seed(2)
    full_text = CLIPTextModelWithProjection(_clip_config(text_config["layers"], "gelu", hidden=text_config["hidden"]))
    text_encoder = CLIPTextModel(_clip_config(text_config["layers"] - 1, "gelu", hidden=text_config["hidden"]))
    source = _hf_text_keys(full_text.state_dict())
    targets = text_encoder.state_dict()
    text_encoder.load_state_dict({k: source[k if k in source else "text_model." + k] for k in targets})
    vae = _full_vae(seed=3) if full_size else _vae(0.18215, seed=3)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=_tokenizer("!"), unet=unet,
                                   scheduler=_scheduler(ancestral=False), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    single = {**_unet_keys(unet), **_vae_keys(vae),
              **_prefixed("cond_stage_model.model.", _open_clip_keys(full_text.state_dict()))}
    return pipe, single


def _full_vae(seed: int, scaling_factor: float = 0.18215):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         scaling_factor=scaling_factor, sample_size=512)


def _build_sdxl_turbo(full_size: bool = False):
    """SDXL-Turbo: tiny, or with the real SDXL sizes (2.6B UNet, CLIP-L + OpenCLIP-bigG) for speed runs."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(11)
    if full_size:
        size_embed, pooled = 256, 1280
        unet = UNet2DConditionModel(
            sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=size_embed,
            projection_class_embeddings_input_dim=pooled + 6 * size_embed)
        text_l, text_g = dict(layers=12, hidden=768), dict(layers=32, hidden=1280)
    else:
        size_embed = 8
        unet = UNet2DConditionModel(
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(64, 128),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2), cross_attention_dim=2 * TEXT_HIDDEN, attention_head_dim=(1, 2),
            use_linear_projection=True, norm_num_groups=32, addition_embed_type="text_time",
            addition_time_embed_dim=size_embed, projection_class_embeddings_input_dim=TEXT_HIDDEN + 6 * size_embed)
        text_l = text_g = dict(layers=3, hidden=TEXT_HIDDEN)
    torch.manual_seed(12)
    clip_l = CLIPTextModel(_clip_config(text_l["layers"], "quick_gelu", hidden=text_l["hidden"]))
    torch.manual_seed(13)
    clip_g = CLIPTextModelWithProjection(_clip_config(text_g["layers"], "gelu", hidden=text_g["hidden"]))
    vae = _full_vae(seed=14, scaling_factor=0.13025) if full_size else _vae(0.13025, seed=14)
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=clip_l, text_encoder_2=clip_g, tokenizer=_tokenizer("<|endoftext|>"),
                                     tokenizer_2=_tokenizer("!"), unet=unet, scheduler=_scheduler(ancestral=True))
    single = {**_unet_keys(unet), **_vae_keys(vae),
              **_prefixed("conditioner.embedders.0.transformer.", _hf_text_keys(clip_l.state_dict())),
              **_prefixed("conditioner.embedders.1.model.", _open_clip_keys(clip_g.state_dict()))}
    return pipe, single


BUILDERS = {"sd_turbo": _build_sd_turbo, "sdxl_turbo": _build_sdxl_turbo}


def build_full_size_sd21(path: Path, diffusers_dir: Path | None = None) -> Path:
    """A random-weight SD-Turbo with the real SD 2.1 sizes (about 5.2 GB fp32), for benchmarks.

    Writes the single file at `path` and, when `diffusers_dir` is given, the same weights as a
    diffusers folder there.
    """
    from safetensors.torch import save_file

    if path.exists() and (diffusers_dir is None or (diffusers_dir / "model_index.json").exists()):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        pipe, single = _build_sd_turbo(full_size=True)
    if not path.exists():
        save_file({k: v.contiguous() for k, v in single.items()}, str(path) + ".partial")
        os.replace(str(path) + ".partial", path)
    del single
    if diffusers_dir is not None:
        pipe.save_pretrained(diffusers_dir, safe_serialization=True)
    return path


def build_full_size_sdxl_fp16(path: Path, diffusers_dir: Path | None = None) -> Path:
    """A random-weight SDXL-Turbo with the real sizes as one fp16 single file (about 6.9 GB, the layout of
    sd_xl_turbo_1.0_fp16), for benchmarks, and the same weights as a diffusers folder when `diffusers_dir`
    is given (the peer's export reads it). Built in fp16 (half of fp32's memory: about 7 GB at the peak)."""
    from safetensors.torch import save_file

    if path.exists() and (diffusers_dir is None or (diffusers_dir / "model_index.json").exists()):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)
    try:
        with torch.no_grad():
            pipe, single = _build_sdxl_turbo(full_size=True)
    finally:
        torch.set_default_dtype(default)
    if diffusers_dir is not None:
        pipe.save_pretrained(diffusers_dir, safe_serialization=True)
    del pipe
    if not path.exists():
        save_file({k: v.half().contiguous() for k, v in single.items()}, str(path) + ".partial")
        os.replace(str(path) + ".partial", path)
    return path


def full_size(family: str):
    """(diffusers pipeline, single-file state dict) of a random-weight model with the real sizes, in memory."""
    with torch.no_grad():
        return BUILDERS[family](full_size=True)


def build(family: str, cache: Path = CACHE) -> TurboModel:
    """Build (or reuse from the cache) the tiny `family` model in both forms."""
    from safetensors.torch import save_file

    out = cache / family
    model = TurboModel(family, out / f"tiny_{family}.safetensors", out / "diffusers")
    stamp = out / "done.json"
    if stamp.exists():
        return model
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        pipe, single = BUILDERS[family]()
    pipe.save_pretrained(model.diffusers_dir, safe_serialization=True)
    save_file({k: v.contiguous() for k, v in single.items()}, str(model.single_file))
    stamp.write_text(json.dumps({"factory": FACTORY_VERSION, "tensors": len(single)}))
    return model


def load_pipeline(model: TurboModel):
    """The diffusers pipeline of a built model, fp32 on CPU."""
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(model.diffusers_dir, torch_dtype=torch.float32, local_files_only=True)


def build_taesd(cache: Path = CACHE) -> Path:
    """Random-weight TAESD and TAESDXL encoder/decoder files of the real architecture (the host's)."""
    from comfy.taesd.taesd import Decoder, Encoder
    from safetensors.torch import save_file

    out = cache / "taesd"
    if (out / "done.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(("taesd", "taesdxl")):
        for part, cls in (("encoder", Encoder), ("decoder", Decoder)):
            module = cls()
            generator = torch.Generator().manual_seed(100 + seed)
            state = {k: torch.randn(v.shape, generator=generator) * (0.5 / max(v[0].numel(), 1) ** 0.5)
                     for k, v in module.state_dict().items()}
            save_file(state, str(out / f"{name}_{part}.safetensors"))
    (out / "done.json").write_text("{}")
    return out
