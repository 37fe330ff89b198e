"""Instance forwards put on host modules for the length of a call: the UNet's conv layers over packed
oneDNN weights (engine on CPU), and the helpers that install and remove such instance attributes."""

import contextlib

import comfy.ops

from ...add_turbo.acceleration import packed_conv

HOST_SYMBOLS = [
    ("comfy.ops", "disable_weight_init.Conv2d.forward", ()),
    ("comfy.ops", "run_every_op", ()),
]
# The host's Conv2d runs its own forward (with weight casts and patches) when any of these is set.
CONV_CAST_ATTRIBUTES = ("comfy_cast_weights", "weight_function", "bias_function")


class _PackedConvForward:
    """A host Conv2d's forward that runs the layer's packed copy where it applies, else the host's own.

    A callable object, not a closure, so that a deep copy of the model points at the copied layer.
    """

    def __init__(self, conv, packed):
        self.conv, self.packed = conv, packed

    def __call__(self, *args, **kwargs):
        conv = self.conv
        if len(args) == 1 and not kwargs and not any(getattr(conv, name, True) for name in CONV_CAST_ATTRIBUTES):
            comfy.ops.run_every_op()  # as the host's forward: cancelling a run still stops it here
            out = self.packed(conv, args[0])
            if out is not None:
                return out
        return type(conv).forward(conv, *args, **kwargs)


@contextlib.contextmanager
def instance_attributes(name: str, values: dict):
    """Within: each module in `values` (module -> callable) has it as its instance attribute `name`, over
    its class's method; removed afterwards unless something else replaced it meanwhile."""
    for module, value in values.items():
        setattr(module, name, value)
    try:
        yield
    finally:
        for module, value in values.items():
            if module.__dict__.get(name) is value:
                delattr(module, name)


@contextlib.contextmanager
def instance_forwards(modules: list, store, new_state, forward_class):
    """Within: each module runs forward_class(module, state) as its instance forward, its state kept in
    `store` (module -> state, made by new_state()) between calls. Yields `modules`."""
    forwards = {}
    for module in modules:
        state = store.get(module)
        if state is None:
            state = store[module] = new_state()
        forwards[module] = forward_class(module, state)
    with instance_attributes("forward", forwards):
        yield modules


def packed_convolutions(patcher, packs):
    """A context manager; within, the UNet's Conv2d layers (the host's ops) run with packed weights
    (add_turbo.packed_conv) where the packed output equals the host's bit for bit, the host's forward
    elsewhere. It yields the layers.

    `packs` (a weakref.WeakKeyDictionary, layer -> PackedConv) keeps the packed weights between runs.
    Layers that already carry an instance forward (another extension's) are left alone.
    """
    layers = [m for m in patcher.model.diffusion_model.modules()
              if isinstance(m, comfy.ops.disable_weight_init.Conv2d) and "forward" not in m.__dict__]
    return instance_forwards(layers, packs, packed_conv.PackedConv, _PackedConvForward)

