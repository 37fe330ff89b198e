"""ADD Turbo core: schedules, samplers, noise and checkpoint inspection for ADD-distilled models.

Pure torch + safetensors. Never imports ComfyUI, so it can be used and tested on its own.
The headless side (add_turbo.headless: server, client, CLI, batch) lives beside it; the core never
imports it.
"""

__version__ = "0.1.0"
