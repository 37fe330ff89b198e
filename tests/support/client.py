"""A small ComfyUI HTTP + websocket client: queue a prompt, follow its events, fetch its images."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

import requests
import websocket


@dataclass
class PromptRun:
    prompt_id: str
    events: list = field(default_factory=list)  # (type, data) websocket messages for this prompt
    error: dict | None = None  # the execution_error data, if any

    def of_type(self, kind: str) -> list:
        return [data for t, data in self.events if t == kind]


class ComfyClient:
    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.client_id = uuid.uuid4().hex
        self.ws = websocket.create_connection(self.url.replace("http", "ws", 1) + f"/ws?clientId={self.client_id}",
                                              timeout=600)

    def close(self):
        self.ws.close()

    def queue(self, prompt: dict) -> requests.Response:
        return requests.post(self.url + "/prompt", json={"prompt": prompt, "client_id": self.client_id}, timeout=30)

    def run(self, prompt: dict, timeout: float = 600) -> PromptRun:
        """Queue `prompt` and read websocket events until it finishes or fails."""
        response = self.queue(prompt)
        if response.status_code != 200:
            raise ValueError(f"prompt rejected ({response.status_code}): {response.text}")
        return self.follow(response.json()["prompt_id"], timeout)

    def follow(self, prompt_id: str, timeout: float = 600) -> PromptRun:
        """Read websocket events of an already queued prompt until it finishes or fails."""
        run = PromptRun(prompt_id)
        deadline = time.time() + timeout
        while time.time() < deadline:
            message = self.ws.recv()
            if not isinstance(message, str):
                continue  # binary preview frames
            event = json.loads(message)
            data = event.get("data", {})
            if data.get("prompt_id") != run.prompt_id:
                continue
            run.events.append((event["type"], data))
            if event["type"] == "execution_error":
                run.error = data
                return run
            if event["type"] in ("execution_success",) or (event["type"] == "executing" and data.get("node") is None):
                return run
        raise TimeoutError(f"prompt {run.prompt_id} did not finish in {timeout}s")

    def history(self, prompt_id: str, timeout: float = 30) -> dict:
        """The prompt's /history entry; it is written just after the last websocket event, so poll."""
        deadline = time.time() + timeout
        while True:
            entry = requests.get(f"{self.url}/history/{prompt_id}", timeout=30).json().get(prompt_id)
            if entry is not None or time.time() > deadline:
                if entry is None:
                    raise TimeoutError(f"no history for prompt {prompt_id}")
                return entry
            time.sleep(0.05)

    def images(self, prompt_id: str) -> list[bytes]:
        """PNG bytes of every image the prompt's output nodes saved, via GET /view."""
        out = []
        for node_output in self.history(prompt_id)["outputs"].values():
            for image in node_output.get("images", []):
                response = requests.get(self.url + "/view", params=image, timeout=30)
                response.raise_for_status()
                out.append(response.content)
        return out

    def object_info(self) -> dict:
        return requests.get(self.url + "/object_info", timeout=60).json()


def txt2img_prompt(ckpt_name: str, text: str = "a photo of a cat", seed: int = 0, steps: int = 1, size: int = 512,
                   prefix: str = "add_turbo") -> dict:
    """API-format graph: ADD Turbo Loader -> CLIPTextEncode -> ADD Turbo Sample -> VAEDecode -> SaveImage."""
    return {
        "1": {"class_type": "ADDTurboLoader", "inputs": {"ckpt_name": ckpt_name}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": text}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "4": {"class_type": "ADDTurboSample", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "latent_image": ["3", 0], "seed": seed, "steps": steps,
            "strength": 1.0, "spacing": "trailing", "sampler": "euler_ancestral", "eta": 1.0}},
        "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": prefix}},
    }
