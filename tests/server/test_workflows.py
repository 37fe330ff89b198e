"""Every example workflow: UI JSON -> API via the server's /object_info -> run on a real server -> outputs checked."""

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from add_turbo.headless.workflow import WorkflowError, ui_to_api
from devkit.client import ComfyClient

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
# (image count, width, height) each workflow's SaveImage writes.
EXPECTED = {
    "SD-Turbo - text to image": (1, 512, 512),
    "SDXL-Turbo - 4 steps with SamplerCustom": (1, 512, 512),
    "SD-Turbo - image to image": (1, 512, 512),
    "SD-Turbo - draft and refine": (1, 768, 768),
    "SD-Turbo - masked refine": (1, 512, 512),
    "SD-Turbo - strength sweep": (4, 512, 512),
}


@pytest.fixture(scope="module")
def object_info(server):
    with ComfyClient(server.url, events=False) as client:
        return client.object_info()




def to_api(path, object_info, tiny_models):
    prompt = ui_to_api(json.loads(path.read_text()), object_info)
    for node in prompt.values():
        if node["class_type"] == "ADDTurboLoader":
            family = "sdxl_turbo" if "xl" in node["inputs"]["ckpt_name"] else "sd_turbo"
            node["inputs"]["ckpt_name"] = tiny_models[family].single_file.name
    return prompt


def test_every_workflow_is_covered():
    assert {p.stem for p in WORKFLOWS} == set(EXPECTED)


def test_the_packs_nodes_in_each_workflow_are_what_the_generator_writes(object_info):
    """scripts/make_workflows.py and the files agree (built-in nodes differ a little between hosts:
    the pack's are compared), and each loader names where its weights come from."""
    from scripts.make_workflows import build

    built = build(object_info)
    assert set(built) == {p.stem for p in WORKFLOWS}
    for path in WORKFLOWS:
        ours = [[n for n in w["nodes"] if n["type"].startswith("ADDTurbo")] for w in (json.loads(path.read_text()),
                                                                                       built[path.stem])]
        assert ours[0] == ours[1], f"{path.name}: run scripts/make_workflows.py"
        for loader in (n for n in ours[0] if n["type"] == "ADDTurboLoader"):
            ckpt, *taesd = loader["properties"]["models"]
            assert ckpt["name"] == loader["widgets_values"][0] and ckpt["directory"] == "checkpoints"
            assert [m["directory"] for m in taesd] == ["vae_approx"] * 2
            assert all(m["url"].startswith("https://huggingface.co/") and m["url"].endswith(f"/resolve/main/{m['name']}")
                       for m in (ckpt, *taesd))


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_runs_and_is_deterministic(client, server, object_info, tiny_models, path):
    prompt = to_api(path, object_info, tiny_models)
    run = client.run(prompt)
    assert run.error is None, run.error
    count, width, height = EXPECTED[path.stem]
    outputs = client.history(run.prompt_id)["outputs"]
    save_nodes = [nid for nid, node in prompt.items() if node["class_type"] == "SaveImage"]
    images = [Image.open(io.BytesIO(png)) for png in _node_images(client, outputs, save_nodes)]
    assert len(images) == count
    for image in images:
        assert image.size == (width, height)
        assert len(set(image.convert("RGB").getdata())) > 100, "blank image"
    # Clear the server's caches and run again: same seed, same bytes.
    client.free()
    again = client.run(prompt)
    assert _node_images(client, client.history(again.prompt_id)["outputs"], save_nodes) == \
        _node_images(client, outputs, save_nodes)


def _node_images(client, outputs, node_ids):
    out = []
    for node_id in node_ids:
        for image in outputs[node_id]["images"]:
            out.append(client.view(image))
    return out


def test_masked_workflow_keeps_unmasked_pixels(client, object_info, tiny_models):
    prompt = to_api(REPO / "workflows" / "SD-Turbo - masked refine.json", object_info, tiny_models)
    run = client.run(prompt)
    (png,) = client.images(run.prompt_id)
    out = Image.open(io.BytesIO(png)).convert("RGB")
    source = Image.open(REPO / "docs" / "examples" / "add_turbo_harbour_masked.png").convert("RGB")
    # A corner far from the transparent (masked) ellipse is unchanged; the masked centre changed.
    assert out.getpixel((20, 480)) == source.getpixel((20, 480))
    assert out.getpixel((385, 120)) != source.getpixel((385, 120))


def test_unknown_node_or_widget_fails_the_check(object_info):
    workflow = json.loads((REPO / "workflows" / "SD-Turbo - image to image.json").read_text())
    renamed = json.loads(json.dumps(workflow))
    next(n for n in renamed["nodes"] if n["type"] == "ADDTurboRefine")["type"] = "ADDTurboRefineV9"
    with pytest.raises(WorkflowError, match="does not define"):
        ui_to_api(renamed, object_info)
    short = json.loads(json.dumps(workflow))
    next(n for n in short["nodes"] if n["type"] == "ADDTurboRefine")["widgets_values"] = [0, "fixed", 2]
    with pytest.raises(WorkflowError, match="no value for widget"):
        ui_to_api(short, object_info)


def test_template_browser_lists_the_workflows_by_readable_names(client):
    templates = client.get_json("/api/workflow_templates")
    listed = templates.get("add-turbo", [])
    assert sorted(listed) == sorted(EXPECTED), templates
    for name in listed:  # the frontend shows a custom template's file name as its title, with NAME.jpg
        assert " - " in name and "_" not in name, name
        assert (REPO / "workflows" / f"{name}.jpg").stat().st_size > 1000


def test_template_category_has_a_readable_label(client):
    """The frontend labels a pack's template category with templateWorkflows.category.<folder> from /i18n."""
    messages = client.get_json("/i18n")
    assert messages["en"]["templateWorkflows"]["category"]["add-turbo"] == "ADD Turbo"
