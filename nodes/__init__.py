"""ComfyUI adapters for the ADD Turbo core: ComfyUI types in, core call, ComfyUI types out."""

from comfy_api.latest import ComfyExtension, io

from .loader import ADDTurboLoader
from .refine import ADDTurboRefine
from .sampling import ADDTurboSample, ADDTurboSampler, ADDTurboScheduler


class ADDTurboExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [ADDTurboLoader, ADDTurboScheduler, ADDTurboSampler, ADDTurboSample, ADDTurboRefine]
