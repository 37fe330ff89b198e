"""The text encoders' layer stacks and TAESD's decode on OpenVINO: stand-ins on the CLIP and the VAE
that run a converted model (openvino_models.OpenVINOCall) wherever nothing is in the way."""

from __future__ import annotations

import logging

from ....add_turbo import mapped_weights
from ....add_turbo.acceleration.openvino_models import OpenVINOCall
from ...host_api import text as host_text
from ...host_api import vae as host_vae
from ...host_api.attachment import StandIn, attachment_of, calls_on
from ...host_api.direct_unet import is_set

HOST_SYMBOLS = [
    ("comfy.clip_model", "CLIPEncoder.forward", ("x", "mask", "intermediate_output")),
    ("comfy.taesd.taesd", "TAESD.decode", ("x",)),
]
log = logging.getLogger(__name__)
ENGINE = "OpenVINO"
TEXT, DECODE = "the text encoders", "the TAESD decode"


def use_openvino_text_encoders(clip, folder, precision: str, blob_cache, threads: int, weights: str = "as_module") -> int:
    """From now on, on CPU, each text encoder's layer stack runs on OpenVINO (converted per input shape and
    intermediate layer, its weights as `weights` says) wherever text_openvino_obstacle finds nothing in the
    way. Returns how many stacks."""
    encoders = host_text.text_encoders(clip)
    if not encoders:
        return 0
    calls = {m: OpenVINOCall(type(m).forward.__get__(m), m, f"text_encoder_{i}", folder, precision, blob_cache,
                             threads, ready=_spill_to(m, f"text_encoder_{i}"), weights=weights)
             for i, m in enumerate(encoders)}
    attachment_of(clip).add(StandIn(ENGINE, TEXT, "run in torch", frozenset({"encode_text"}), "forward",
                                    targets=lambda clip: calls, obstacle=lambda clip: text_openvino_obstacle(clip),
                                    calls=list(calls.values())))
    return len(encoders)


def _spill_to(stack, name: str):
    """Once the stack's IR is on disk: its torch weights become the mapping of a file beside it (written
    once), so that they leave memory while OpenVINO serves and a fallback reads them again."""
    def ready(xml):
        moved = mapped_weights.spill(stack, xml.parent / f"{name}-torch.safetensors")
        if moved:
            log.info("ADD Turbo OpenVINO: %s's torch weights (%.2f GiB) stay on disk while OpenVINO serves",
                     name, moved / 2**30)
    return ready


def text_openvino_obstacle(clip) -> str | None:
    """Why the text encoders run in torch for this encode, or None. The converted model holds the file's
    weights, so a patch on them (a LoRA) counts too."""
    device = clip.patcher.load_device
    if device.type != "cpu":
        return f"OpenVINO runs on the CPU, this text encoder on {device.type}"
    if is_set(getattr(clip.patcher, "patches", None)):
        return "the text encoder's weights are patched (a LoRA or another patch)"
    return host_text.layer_obstacle(clip)


def use_openvino_taesd(vae, folder, precision: str, blob_cache, threads: int) -> bool:
    """From now on, on CPU, TAESD's decode inside `vae.decode` runs on OpenVINO (converted per latent
    shape) wherever nothing is in the way. False: not TAESD."""
    model = host_vae.taesd_model(vae)
    if model is None:
        return False
    call = OpenVINOCall(type(model).decode.__get__(model), model, "taesd_decode", folder, precision, blob_cache,
                        threads)
    attachment_of(vae).add(StandIn(ENGINE, DECODE, "runs in torch", frozenset({"decode"}), "decode",
                                   targets=lambda vae: {vae.first_stage_model: call},
                                   obstacle=lambda vae: taesd_openvino_obstacle(vae), calls=[call]))
    return True


def taesd_openvino_obstacle(vae) -> str | None:
    """Why TAESD's decode runs in torch for this call, or None."""
    if vae.device.type != "cpu":
        return f"OpenVINO runs on the CPU, this VAE on {vae.device.type}"
    return host_vae.decode_obstacle(vae)


def calls_of(host, part: str) -> list:
    """The OpenVINOCalls this engine put on `host` (a CLIP or a VAE) for `part`; [] where none."""
    return calls_on(host, ENGINE, part)
