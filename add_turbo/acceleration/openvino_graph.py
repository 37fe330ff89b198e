"""Rewrites of a converted OpenVINO graph before it is saved.

`fold_weight_slices`: a weight the torch module slices in its forward (GEGLU's projection as two
products, add_turbo.acceleration.lighter_layers) reaches the IR as Constant -> Convert -> Slice. Neither
NNCF's weight compression nor the CPU plugin's compressed weights recognise that chain: NNCF leaves it in
the file's dtype, and the CPU plugin folds it into f32 constants (on SDXL's UNet 1.5 GiB of fp16 weights
became 3 GiB of f32 in an int8 model). Slicing the constant itself leaves Constant -> Convert -> MatMul,
the pattern both handle, with the same values.
"""

from __future__ import annotations

import numpy as np

INT64_MAX = np.iinfo(np.int64).max


def _constant_values(node) -> list[int] | None:
    if node.get_type_name() != "Constant":
        return None
    return [int(v) for v in node.get_vector()]


def _sliced_constant(slice_op):
    """(the Convert above the weight, the sliced weight as an array) for a Slice of Convert(Constant) with
    constant positive-step bounds, or None."""
    convert = slice_op.input_value(0).get_node()
    if convert.get_type_name() != "Convert" or convert.input_value(0).get_node().get_type_name() != "Constant":
        return None
    bounds = [_constant_values(slice_op.input_value(i).get_node()) for i in range(1, slice_op.get_input_size())]
    if any(b is None for b in bounds):
        return None
    starts, stops, steps = bounds[:3]
    weight = convert.input_value(0).get_node().get_data()
    axes = bounds[3] if len(bounds) > 3 else list(range(len(starts)))
    if min(steps) <= 0:
        return None
    index = [slice(None)] * weight.ndim
    for axis, start, stop, step in zip(axes, starts, stops, steps, strict=True):
        index[axis % weight.ndim] = slice(start, None if stop >= INT64_MAX else stop, step)
    return convert, np.ascontiguousarray(weight[tuple(index)])


def fold_weight_slices(model) -> int:
    """Replace each Slice of a converted constant in `model` (an openvino.Model, changed in place) by the
    conversion of the sliced constant: same values, in the weight's own dtype. Returns how many."""
    from openvino import opset13 as ops

    folded = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Slice" or (found := _sliced_constant(op)) is None:
            continue
        convert, weight = found
        replacement = ops.convert(ops.constant(weight), convert.get_output_element_type(0))
        op.output(0).replace(replacement.output(0))
        folded += 1
    return folded
