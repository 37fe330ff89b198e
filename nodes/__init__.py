"""ComfyUI adapters for the ADD Turbo core: ComfyUI types in, core call, ComfyUI types out."""

from comfy_api.v0_0_2 import ComfyExtension, io

from .loader import ADDTurboLoader
from .refine import ADDTurboRefine
from .sampling import ADDTurboSample, ADDTurboSampler, ADDTurboScheduler

HOST_SYMBOLS = [
    ("comfy_api.v0_0_2", "ComfyExtension.get_node_list", ()),
    ("comfy_api.v0_0_2", "io.ComfyNode", None),
]


class ADDTurboExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [ADDTurboLoader, ADDTurboScheduler, ADDTurboSampler, ADDTurboSample, ADDTurboRefine]
