"""ADD Turbo core: schedules, samplers, noise and checkpoint inspection for ADD-distilled models.

Pure torch + safetensors. Never imports ComfyUI, so it can be used and tested on its own.
"""

__version__ = "0.1.0"
