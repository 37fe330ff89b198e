"""A ComfyUI client over HTTP and websocket (aiohttp, which every ComfyUI install has).

The pack's one implementation of the server's protocol: the CLI uses it, and the development kit
(devkit/client.py) drives it synchronously for the tests, benchmarks and scripts.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp

# The websocket events after which a prompt is over (besides `executing` with no node).
END_EVENTS = ("execution_success", "execution_error", "execution_interrupted")


class PromptError(RuntimeError):
    """The server refused the prompt or its execution failed; str() is the server's message.

    `details` is what the server sent: its JSON answer to a refused POST /prompt, or the data of the
    execution_error event; None otherwise.
    """

    def __init__(self, message: str, details: dict | None = None):
        super().__init__(message)
        self.details = details


class ServerUnreachable(ConnectionError):
    """Nothing (or no ComfyUI) answers at the URL, or the connection broke; str() says which, in one line."""


@dataclass
class Result:
    prompt_id: str
    images: list[tuple[str, bytes]] = field(default_factory=list)  # (file name, PNG bytes)
    seconds: float = 0.0  # queue to images fetched, on this side
    server_seconds: float | None = None  # the server's execution, start to success (its history's timestamps)


def execution_seconds(entry: dict) -> float | None:
    """Seconds from execution_start to execution_success in a history entry's status messages."""
    stamps = {kind: data.get("timestamp") for kind, data in entry.get("status", {}).get("messages", [])}
    if stamps.get("execution_start") is None or stamps.get("execution_success") is None:
        return None
    return (stamps["execution_success"] - stamps["execution_start"]) / 1000


def _format_node_errors(body: dict) -> str:
    lines = [body.get("error", {}).get("message", "prompt rejected")]
    for node_id, node in (body.get("node_errors") or {}).items():
        for error in node.get("errors", []):
            lines.append(f"  node {node_id} ({node.get('class_type')}): {error.get('message')}: {error.get('details')}")
    return "\n".join(lines)


class Client:
    """`async with Client(url) as client:`; `run(prompt)` queues a prompt, follows it and fetches its images.

    progress: called with the data of each `progress` event of a run (default: a bar on stderr).
    events: open the websocket that `run` and `events` follow; False for plain HTTP requests only.
    """

    def __init__(self, url: str, progress=None, events: bool = True):
        self.url = url.rstrip("/")
        self.client_id = uuid.uuid4().hex
        self.progress = progress if progress is not None else _progress_bar
        self.follows_events = events
        self.session: aiohttp.ClientSession | None = None
        self.ws = None

    async def __aenter__(self):
        # A short connect timeout: a wrong host should fail in seconds, not after the 5 min total default.
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300, sock_connect=10))
        if not self.follows_events:
            return self
        try:
            self.ws = await self.session.ws_connect(f"{self.url}/ws?clientId={self.client_id}", max_msg_size=0)
        except aiohttp.WSServerHandshakeError as error:
            await self.session.close()  # else aiohttp warns about an unclosed session at exit
            raise ServerUnreachable(f"{self.url} answered, but not as a ComfyUI server "
                                    f"(GET /ws: {error.status} {error.message})") from error
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            await self.session.close()
            raise ServerUnreachable(f"no ComfyUI server at {self.url}") from error
        return self

    async def __aexit__(self, *exc):
        if self.ws is not None:
            await self.ws.close()
        await self.session.close()

    async def get_json(self, path: str) -> dict:
        """GET a JSON endpoint of the server (`path` such as "/queue" or "/system_stats")."""
        async with self.session.get(f"{self.url}{path}") as response:
            response.raise_for_status()
            return await response.json()

    async def object_info(self) -> dict:
        """Every node's definition (GET /object_info)."""
        async with self.session.get(f"{self.url}/object_info") as response:
            return await response.json()

    async def queue(self, prompt: dict, extra_data: dict | None = None) -> str:
        """Queue an API-format prompt for this client (POST /prompt); its prompt id. `extra_data` goes with
        it as the editor's does: {"extra_pnginfo": {"workflow": ...}} is written into saved PNGs.

        Raises:
            PromptError: the server refused it (its validation); `details` holds the server's answer.
        """
        body = {"prompt": prompt, "client_id": self.client_id, **({"extra_data": extra_data} if extra_data else {})}
        async with self.session.post(f"{self.url}/prompt", json=body) as r:
            text = await r.text()
            try:
                body = json.loads(text)
            except ValueError:
                if r.status != 200:
                    raise PromptError(f"the server refused the prompt (POST /prompt: {r.status}): {text[:500]}") from None
                raise ServerUnreachable(f"{self.url} answered POST /prompt with no JSON: {text[:200]!r}") from None
            if r.status != 200:
                raise PromptError(_format_node_errors(body), body)
        return body["prompt_id"]

    async def events(self, prompt_id: str) -> AsyncIterator[tuple[str, dict]]:
        """(type, data) of each websocket event of a queued prompt, up to and including the one that ends it.

        Raises:
            ServerUnreachable: the server closed the connection before the prompt ended.
        """
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue  # binary preview frames
            event = json.loads(message.data)
            data = event.get("data", {})
            if data.get("prompt_id") != prompt_id:
                continue
            kind = event["type"]
            yield kind, data
            if kind in END_EVENTS or (kind == "executing" and data.get("node") is None):
                return
        raise ServerUnreachable(f"the ComfyUI server at {self.url} closed the connection during the run")

    async def run(self, prompt: dict, extra_data: dict | None = None) -> Result:
        """Queue an API-format prompt (with `extra_data`, see queue), follow it to the end, and fetch the
        images its output nodes saved."""
        start = time.perf_counter()
        prompt_id = await self.queue(prompt, extra_data)
        async for kind, data in self.events(prompt_id):
            if kind == "progress":
                self.progress(data)
            elif kind == "execution_error":
                raise PromptError(f"node {data.get('node_id')} ({data.get('node_type')}): {data.get('exception_message')}",
                                  data)
            elif kind == "execution_interrupted":
                raise PromptError("execution was interrupted")
        entry = await self.history(prompt_id)
        result = Result(prompt_id, server_seconds=execution_seconds(entry))
        result.images = await self.images(prompt_id, entry=entry)
        result.seconds = time.perf_counter() - start
        return result

    async def history(self, prompt_id: str | None = None) -> dict:
        """The server's history (GET /history): every prompt's entry by id, or `prompt_id`'s entry.

        A prompt's entry is written just after its last websocket event, so this waits for it a little.

        Raises:
            PromptError: the server kept no entry for `prompt_id`.
        """
        if prompt_id is None:
            return await self.get_json("/history")
        for _ in range(1000):  # 10 s; the entry usually lands within a few ms (a long poll adds to every run)
            async with self.session.get(f"{self.url}/history/{prompt_id}") as response:
                entry = (await response.json()).get(prompt_id)
            if entry is not None:
                return entry
            await asyncio.sleep(0.01)
        raise PromptError(f"the server kept no history for prompt {prompt_id}")

    async def view(self, image: dict) -> bytes:
        """The bytes of one image of a history entry's outputs ({"filename", "subfolder", "type"}), via GET /view.

        Raises:
            PromptError: the server has no such image.
        """
        async with self.session.get(f"{self.url}/view", params=image) as response:
            if response.status != 200:
                raise PromptError(f"the server sent no image {image.get('filename')} (GET /view: {response.status})")
            return await response.read()

    async def images(self, prompt_id: str, saved_only: bool = True, entry: dict | None = None) -> list[tuple[str, bytes]]:
        """(file name, bytes) of each image a finished prompt's output nodes wrote: the saved ones
        (type "output"), or with saved_only=False the previews (type "temp") too. `entry`: its history
        entry, when already fetched."""
        out = []
        for node_output in (entry or await self.history(prompt_id)).get("outputs", {}).values():
            for image in node_output.get("images", []):
                if saved_only and image.get("type") != "output":
                    continue
                out.append((image["filename"], await self.view(image)))
        return out

    async def interrupt(self, prompt_id: str | None = None) -> None:
        """Stop the running prompt (POST /interrupt): only if it is `prompt_id`, when given."""
        async with self.session.post(f"{self.url}/interrupt", json={"prompt_id": prompt_id} if prompt_id else {}) as r:
            r.raise_for_status()

    async def free(self, unload_models: bool = False) -> None:
        """Free the server's cached memory (POST /free), and unload its models too when asked."""
        body = {"free_memory": True, **({"unload_models": True} if unload_models else {})}
        async with self.session.post(f"{self.url}/free", json=body) as response:
            response.raise_for_status()


def _progress_bar(data: dict) -> None:
    value, maximum = data.get("value", 0), max(data.get("max", 1), 1)
    filled = int(30 * value / maximum)
    sys.stderr.write(f"\r  node {data.get('node')}: [{'#' * filled}{'.' * (30 - filled)}] {value}/{maximum}")
    if value >= maximum:
        sys.stderr.write("\n")
    sys.stderr.flush()
