"""The development kit shared by the tests, the benchmarks and the scripts.

- `host`: the development ComfyUI host built by scripts/build_host.sh: where it is, importing it into
  this process, starting it as a server (with add_turbo.headless.server, the pack's one launcher).
- `pack`: the pack's own modules as that in-process host imported them (`pack_module("nodes.precision")`);
  the pack's nodes/ package shares its name with ComfyUI's `nodes`.
- `turbo_models`, `tiny_addons`: random-weight SD-Turbo / SDXL-Turbo models of the real architectures,
  tiny (tests) or full-size (benchmarks), and tiny LoRA / ControlNet files for them.
- `graphs`: the graphs that are run: nodes called in-process the way the executor calls them, and
  API-format prompts for a server.
- `client`: a synchronous face of add_turbo.headless.client, the pack's one HTTP + websocket client.
- `browser`: the editor in headless Chromium, driven by Playwright.

Not used by the node pack at run time: nothing under add_turbo/ or nodes/ imports it. Run what uses it
from the repository root (`python -m pytest`, `python -m bench.speed`, `python -m scripts.run_example`).
"""
