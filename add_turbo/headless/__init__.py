"""ADD Turbo's headless side: ComfyUI driven from outside, over HTTP and websocket, never imported by the nodes.

- `server`: start and stop a ComfyUI server process (the CLI's, the tests' and the benches' one launcher).
- `client`: the pack's one HTTP + websocket client of ComfyUI (aiohttp).
- `workflow`: the editor's UI format <-> the API ("prompt") format, driven by /object_info.
- `job`: what the CLI and the batch queue: a workflow as a prompt, its --set overrides, the default ComfyUI.
- `cli`: `python -m add_turbo run` and `batch` (add_turbo/__main__.py is the entry point).
- `sweep`, `manifest`, `batch`, `batch_worker`, `ray_batch`: the resumable batch, on one ComfyUI or on Ray.

The core (the rest of add_turbo/) never imports this package; this package never imports nodes/ or ComfyUI.
"""
