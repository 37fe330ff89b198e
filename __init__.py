"""ADD Turbo: SD-Turbo and SDXL-Turbo for ComfyUI (V3 node API).

Nothing happens at import: the nodes are loaded when ComfyUI calls `comfy_entrypoint()`.
"""

WEB_DIRECTORY = "./js"


async def comfy_entrypoint():
    from .nodes import ADDTurboExtension

    return ADDTurboExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
