"""A model compiled from its IR with a blob cache is imported again from the blob it wrote, so that it holds
its compiled weights only (compiled from the IR, OpenVINO keeps the transformed graph's beside them), and
computes what torch computes."""

import pytest
import torch

from add_turbo.acceleration.openvino_models import StaticModel, convert
from tests.support.tolerances import assert_fp32_close

pytest.importorskip("openvino", reason="the host build installs openvino (scripts/requirements-dev.txt)")


def test_a_first_compile_is_served_from_the_blob_it_wrote(tmp_path):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(1, 4, 16, 16)
    xml = tmp_path / "ir" / "block.xml"
    convert(module, (x,), xml)
    blobs = tmp_path / "blobs"

    first = StaticModel(xml, "f32", blobs, threads=1)
    assert first.compiled.get_property("LOADED_FROM_CACHE")  # imported again from its own blob
    assert list((blobs / "f32").glob("*.blob"))
    with torch.no_grad():
        expected = module(x)
    assert_fp32_close(first(x), expected)

    without_cache = StaticModel(xml, "f32", None, threads=1)  # nothing to import from: compiled once
    assert not without_cache.compiled.get_property("LOADED_FROM_CACHE")
    assert_fp32_close(without_cache(x), expected)
