"""Write the example workflows (UI format) in workflows/ from the graphs below and a live /object_info.

Run after changing a node's inputs, in the host's Python from the repository root:
  ~/.cache/add-turbo/hosts/0.3.75/venv/bin/python -m scripts.make_workflows
"""

from __future__ import annotations

import json
from pathlib import Path

from add_turbo.headless.workflow import api_to_ui
from devkit import host
from devkit.client import ComfyClient

REPO = Path(__file__).resolve().parents[1]

SD_TURBO, SDXL_TURBO = "sd_turbo.safetensors", "sd_xl_turbo_1.0_fp16.safetensors"
# Where each file comes from, and its models/ folder: each loader node lists its checkpoint and the
# family's TAESD pair in properties.models, which the editor reads (name, url, directory) to offer the
# download of a missing file. The editor shows the ones a widget selects, and downloads only from
# allow-listed hosts (huggingface.co among them).
HF = "https://huggingface.co"
DOWNLOADS = {
    SD_TURBO: (f"{HF}/stabilityai/sd-turbo/resolve/main/{SD_TURBO}", "checkpoints"),
    SDXL_TURBO: (f"{HF}/stabilityai/sdxl-turbo/resolve/main/{SDXL_TURBO}", "checkpoints"),
    **{f"{taesd}_{part}.safetensors": (f"{HF}/madebyollin/{taesd}/resolve/main/{taesd}_{part}.safetensors", "vae_approx")
       for taesd in ("taesd", "taesdxl") for part in ("encoder", "decoder")},
}
TAESD = {SD_TURBO: "taesd", SDXL_TURBO: "taesdxl"}
INPUT_IMAGE, MASKED_IMAGE = "add_turbo_harbour.png", "add_turbo_harbour_masked.png"
PROMPT = "a cinematic photo of a fishing harbour at sunset, boats, golden light"


def model_files(ckpt: str) -> list[dict]:
    """A loader node's properties.models: the checkpoint, then the TAESD pair its decoder: taesd reads."""
    names = [ckpt, *(f"{TAESD[ckpt]}_{part}.safetensors" for part in ("encoder", "decoder"))]
    return [{"name": name, "url": DOWNLOADS[name][0], "directory": DOWNLOADS[name][1]} for name in names]


def loader(ckpt):
    return {"class_type": "ADDTurboLoader", "inputs": {"ckpt_name": ckpt, "weight_dtype": "auto", "decoder": "full"}}


def encode(text, clip=("1", 1)):
    return {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": list(clip)}}


def sample_node(steps=1, seed=0, latent=("3", 0), strength=1.0):
    return {"class_type": "ADDTurboSample", "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "latent_image": list(latent), "seed": seed, "steps": steps,
        "strength": strength, "spacing": "trailing", "sampler": "euler_ancestral", "eta": 1.0}}


def refine(image, steps=2, strength=0.5, seed=0, mask=None):
    node = {"class_type": "ADDTurboRefine", "inputs": {
        "model": ["1", 0], "vae": ["1", 2], "positive": ["2", 0], "image": list(image), "seed": seed, "steps": steps,
        "strength": strength, "spacing": "trailing", "sampler": "euler_ancestral", "eta": 1.0}}
    if mask:
        node["inputs"]["mask"] = list(mask)
    return node


def save(images, prefix):
    return {"class_type": "SaveImage", "inputs": {"images": list(images), "filename_prefix": prefix}}


def empty(size=512, batch=1):
    return {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": batch}}


def decode(samples, vae=("1", 2)):
    return {"class_type": "VAEDecode", "inputs": {"samples": list(samples), "vae": list(vae)}}


def load_image(name):
    return {"class_type": "LoadImage", "inputs": {"image": name}}


ROW = {"1": [0, 0], "2": [340, 0], "3": [340, 260]}
WORKFLOWS = {
    "SD-Turbo - text to image": (
        "SD-Turbo text to image in 1 step at 512x512: the one-node ADD Turbo Sample, no negative prompt, no CFG.",
        {"1": loader(SD_TURBO), "2": encode(PROMPT), "3": empty(), "4": sample_node(), "5": decode(("4", 0)),
         "6": save(("5", 0), "add_turbo_txt2img")},
        {**ROW, "4": [700, 0], "5": [1060, 0], "6": [1300, 0]}),
    "SDXL-Turbo - 4 steps with SamplerCustom": (
        "SDXL-Turbo, 4 steps, with the built-in SamplerCustom: ADD Turbo Scheduler (trailing spacing) and ADD Turbo "
        "Sampler (Euler ancestral with CPU-keyed noise). cfg 1.0, so the negative input is never evaluated.",
        {"1": loader(SDXL_TURBO), "2": encode(PROMPT), "3": empty(),
         "4": {"class_type": "ADDTurboScheduler", "inputs": {"model": ["1", 0], "steps": 4, "strength": 1.0, "spacing": "trailing"}},
         "5": {"class_type": "ADDTurboSampler", "inputs": {"sampler": "euler_ancestral", "eta": 1.0}},
         "6": {"class_type": "SamplerCustom", "inputs": {
             "model": ["1", 0], "add_noise": True, "noise_seed": 0, "cfg": 1.0, "positive": ["2", 0], "negative": ["2", 0],
             "sampler": ["5", 0], "sigmas": ["4", 0], "latent_image": ["3", 0]}},
         "7": decode(("6", 0)), "8": save(("7", 0), "add_turbo_sdxl_custom")},
        {**ROW, "4": [340, 420], "5": [340, 580], "6": [700, 0], "7": [1060, 0], "8": [1300, 0]}),
    "SD-Turbo - image to image": (
        "Image to image: load an image and refine it with a prompt in 2 steps at strength 0.5 (continuous, never "
        "rounded, never zero steps).",
        {"1": loader(SD_TURBO), "2": encode("an oil painting of a harbour at sunset, thick brush strokes"),
         "3": load_image(INPUT_IMAGE), "4": refine(("3", 0)), "5": save(("4", 0), "add_turbo_img2img")},
        {**ROW, "3": [0, 300], "4": [700, 0], "5": [1060, 0]}),
    "SD-Turbo - draft and refine": (
        "Draft and refine: a 1-step 512 px draft, upscaled 1.5x, then refined in 2 steps at the larger size.",
        {"1": loader(SD_TURBO), "2": encode(PROMPT), "3": empty(), "4": sample_node(), "5": decode(("4", 0)),
         "6": {"class_type": "ImageScaleBy", "inputs": {"image": ["5", 0], "upscale_method": "bicubic", "scale_by": 1.5}},
         "7": refine(("6", 0), steps=2, strength=0.4), "8": save(("7", 0), "add_turbo_refined"),
         "9": {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}}},
        {**ROW, "4": [700, 0], "5": [1060, 0], "6": [1060, 300], "7": [1340, 0], "8": [1700, 0], "9": [1340, 420]}),
    "SD-Turbo - masked refine": (
        "Masked refine (inpaint-like): only the transparent area of the loaded image (its mask) changes, with a soft "
        "edge; every other pixel stays exactly as it was.",
        {"1": loader(SD_TURBO), "2": encode("a full moon in a clear evening sky"), "3": load_image(MASKED_IMAGE),
         "4": refine(("3", 0), steps=2, strength=0.9, mask=("3", 1)), "5": save(("4", 0), "add_turbo_masked")},
        {**ROW, "3": [0, 300], "4": [700, 0], "5": [1060, 0]}),
    "SD-Turbo - strength sweep": (
        "Strength sweep: the same image refined at strength 0.25, 0.5, 0.75 and 1.0 (1.0 = text to image from the "
        "same seed), saved as one batch to compare what strength does.",
        {"1": loader(SD_TURBO), "2": encode(PROMPT), "3": load_image(INPUT_IMAGE),
         "4": refine(("3", 0), strength=0.25), "5": refine(("3", 0), strength=0.5),
         "6": refine(("3", 0), strength=0.75), "7": refine(("3", 0), strength=1.0),
         "8": {"class_type": "ImageBatch", "inputs": {"image1": ["4", 0], "image2": ["5", 0]}},
         "9": {"class_type": "ImageBatch", "inputs": {"image1": ["8", 0], "image2": ["6", 0]}},
         "10": {"class_type": "ImageBatch", "inputs": {"image1": ["9", 0], "image2": ["7", 0]}},
         "11": save(("10", 0), "add_turbo_sweep")},
        {**ROW, "3": [0, 300], "4": [700, 0], "5": [700, 330], "6": [700, 660], "7": [700, 990], "8": [1060, 0],
         "9": [1060, 200], "10": [1060, 400], "11": [1340, 0]}),
}


def build(info: dict) -> dict[str, dict]:
    """Each example workflow (UI format) by name, laid out with a server's node definitions."""
    workflows = {}
    for name, (description, graph, positions) in WORKFLOWS.items():
        workflow = api_to_ui(graph, info, positions, notes=[(description, [0, -220], [640, 140])])
        workflow["extra"]["add_turbo_description"] = description
        for node in workflow["nodes"]:
            if node["type"] == "ADDTurboLoader":
                node["properties"]["models"] = model_files(graph[str(node["id"])]["inputs"]["ckpt_name"])
        workflows[name] = workflow
    return workflows


def main() -> int:
    server = host.start_server()
    try:
        with ComfyClient(server.url, events=False) as client:
            info = client.object_info()
    finally:
        server.stop()
    out = REPO / "workflows"
    out.mkdir(exist_ok=True)
    for name, workflow in build(info).items():
        (out / f"{name}.json").write_text(json.dumps(workflow, indent=1) + "\n")
        print(f"wrote workflows/{name}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
