"""A weight sliced in the forward (GEGLU's two products) reaches the IR as a weight of its own: int8
compresses it, and the model computes what torch computes."""

import math

import pytest
import torch

from add_turbo.acceleration import lighter_layers
from add_turbo.acceleration.openvino_models import StaticModel, convert
from tests.support.tolerances import assert_fp32_close

ov = pytest.importorskip("openvino", reason="the host build installs openvino (scripts/requirements-dev.txt)")


class HalfGEGLU(torch.nn.Module):
    """GEGLU with fp16 weights cast in the forward, as the host's layers hold a checkpoint's weights."""

    def __init__(self, features=64, out=96):
        super().__init__()
        self.proj = torch.nn.Linear(features, 2 * out).half()

    def forward(self, x):
        return lighter_layers.geglu(x, self.proj.weight.float(), self.proj.bias.float())


def _weights_by_dtype(xml):
    """{element type: number of weight elements} of the IR's constants with more than 256 elements."""
    counts = {}
    for op in ov.Core().read_model(str(xml)).get_ordered_ops():
        if op.get_type_name() == "Constant" and op.get_output_partial_shape(0).is_static:
            if (size := math.prod(op.get_output_shape(0))) > 256:
                kind = op.get_output_element_type(0).get_type_name()
                counts[kind] = counts.get(kind, 0) + size
    return counts


def _slices_of_constants(xml) -> int:
    model = ov.Core().read_model(str(xml))
    return sum(1 for op in model.get_ordered_ops() if op.get_type_name() == "Slice"
               and op.input_value(0).get_node().get_type_name() in ("Convert", "Constant"))


@pytest.mark.parametrize("weights", ["as_module", "int8"])
def test_sliced_weights_become_weights_of_their_own(tmp_path, weights):
    if weights == "int8":
        pytest.importorskip("nncf", reason="the host build installs nncf (scripts/requirements-dev.txt)")
    torch.manual_seed(0)
    module = HalfGEGLU().eval()
    x = torch.randn(1, 16, 64)
    xml = tmp_path / weights / "geglu.xml"
    convert(module, (x,), xml, weights)

    assert _slices_of_constants(xml) == 0
    kinds = _weights_by_dtype(xml)
    if weights == "int8":
        assert set(kinds) == {"u8"}, kinds  # both halves of the projection compressed
        assert kinds["u8"] == 2 * 96 * 64
    else:
        assert kinds == {"f16": 2 * 96 * 64}  # the module's own dtype, half the bytes of f32
        with torch.no_grad():
            assert_fp32_close(StaticModel(xml, "f32", None, threads=1)(x), module(x))
