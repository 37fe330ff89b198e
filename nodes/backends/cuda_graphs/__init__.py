"""The CUDA graphs engine (with the loader's engine on): each text encoder's layer stack and TAESD's
decode replay a CUDA graph per input size (add_turbo.acceleration.cuda_graphs.GraphedCall) wherever
nothing is in the way. The UNet's step graphs belong to the sampling engine (nodes/engine/direct.py):
they are recorded per sampling run, not installed at load.
"""

from __future__ import annotations

from ....add_turbo.acceleration.cuda_graphs import GraphedCall
from ...host_api import text as host_text
from ...host_api import vae as host_vae
from ...host_api.attachment import StandIn, attachment_of, calls_on
from ..report import Report

HOST_SYMBOLS = [
    ("comfy.clip_model", "CLIPEncoder.forward", ("x", "mask", "intermediate_output")),
    ("comfy.taesd.taesd", "TAESD.decode", ("x",)),
]
NAME = "cuda_graphs"
ENGINE = "engine"  # in the log: it is part of the loader's engine option
TEXT, DECODE = "the text encoders", "the TAESD decode"


def wanted(options) -> bool:
    return options.engine == "on"


def install(model, clip, vae, options, info) -> Report:
    """From now on the text encoders of `clip` and TAESD's decode inside `vae.decode` replay CUDA graphs
    where text_graph_obstacle / taesd_graph_obstacle find nothing in the way (on a CPU they never do)."""
    report = Report(NAME)
    encoders = host_text.text_encoders(clip)
    if encoders:
        graphs = {m: GraphedCall(type(m).forward.__get__(m), m, "a text encoder") for m in encoders}
        attachment_of(clip).add(StandIn(
            ENGINE, TEXT, "run without CUDA graphs", frozenset({"encode_text"}), "forward",
            targets=lambda clip: graphs, obstacle=lambda clip: text_graph_obstacle(clip),
            logged=lambda clip: clip.patcher.load_device.type == "cuda", calls=list(graphs.values())))
        report.took(TEXT)
    else:
        report.left(TEXT, "the CLIP is not the loader's")
    taesd = host_vae.taesd_model(vae)
    if taesd is None:
        return report.left(DECODE, "the VAE is not TAESD")
    graph = GraphedCall(type(taesd).decode.__get__(taesd), taesd, "the TAESD decode")
    attachment_of(vae).add(StandIn(
        ENGINE, DECODE, "runs without a CUDA graph", frozenset({"decode"}), "decode",
        targets=lambda vae: {vae.first_stage_model: graph}, obstacle=lambda vae: taesd_graph_obstacle(vae),
        logged=lambda vae: vae.device.type == "cuda", calls=[graph]))
    return report.took(DECODE)


def text_graph_obstacle(clip) -> str | None:
    """Why the text encoders do not replay CUDA graphs for this encode (they run as the host's), or None."""
    device = clip.patcher.load_device
    if device.type != "cuda":
        return f"no CUDA graphs on {device.type}"
    return host_text.layer_obstacle(clip)


def taesd_graph_obstacle(vae) -> str | None:
    """Why `vae`'s TAESD decode is not replayed from a CUDA graph now (it runs as the host's), or None."""
    if vae.device.type != "cuda":
        return f"no CUDA graphs on {vae.device.type}"
    return host_vae.decode_obstacle(vae)


def graphs_of(host, part: str) -> list:
    """The GraphedCalls this engine put on `host` for `part` (TEXT or DECODE); [] where none."""
    return calls_on(host, ENGINE, part)
