"""A ComfyUI client over HTTP and websocket (aiohttp, which every ComfyUI install has)."""

from __future__ import annotations

import json
import sys
import uuid
from dataclasses import dataclass, field

import aiohttp


class PromptError(RuntimeError):
    """The server refused the prompt or its execution failed; str() is the server's message."""


class ServerUnreachable(ConnectionError):
    """Nothing (or no ComfyUI) answers at the URL, or the connection broke; str() says which, in one line."""


@dataclass
class Result:
    prompt_id: str
    images: list[tuple[str, bytes]] = field(default_factory=list)  # (file name, PNG bytes)
    seconds: float = 0.0


def _format_node_errors(body: dict) -> str:
    lines = [body.get("error", {}).get("message", "prompt rejected")]
    for node_id, node in (body.get("node_errors") or {}).items():
        for error in node.get("errors", []):
            lines.append(f"  node {node_id} ({node.get('class_type')}): {error.get('message')}: {error.get('details')}")
    return "\n".join(lines)


class Client:
    def __init__(self, url: str, progress=None):
        self.url = url.rstrip("/")
        self.client_id = uuid.uuid4().hex
        self.progress = progress if progress is not None else _progress_bar
        self.session: aiohttp.ClientSession | None = None
        self.ws = None

    async def __aenter__(self):
        # A short connect timeout: a wrong host should fail in seconds, not after the 5 min total default.
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300, sock_connect=10))
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
        await self.ws.close()
        await self.session.close()

    async def object_info(self) -> dict:
        async with self.session.get(f"{self.url}/object_info") as response:
            return await response.json()

    async def run(self, prompt: dict) -> Result:
        """Queue an API-format prompt, follow it to the end, and fetch the images its output nodes saved."""
        import time

        start = time.perf_counter()
        async with self.session.post(f"{self.url}/prompt", json={"prompt": prompt, "client_id": self.client_id}) as r:
            body = await r.json(content_type=None)
            if r.status != 200:
                raise PromptError(_format_node_errors(body))
        prompt_id = body["prompt_id"]
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            event = json.loads(message.data)
            data = event.get("data", {})
            if data.get("prompt_id") != prompt_id:
                continue
            kind = event["type"]
            if kind == "progress":
                self.progress(data)
            elif kind == "execution_error":
                raise PromptError(f"node {data.get('node_id')} ({data.get('node_type')}): {data.get('exception_message')}")
            elif kind == "execution_interrupted":
                raise PromptError("execution was interrupted")
            elif kind == "execution_success" or (kind == "executing" and data.get("node") is None):
                break
        else:
            raise ServerUnreachable(f"the ComfyUI server at {self.url} closed the connection during the run")
        result = Result(prompt_id, seconds=time.perf_counter() - start)
        for node_output in (await self._history(prompt_id)).get("outputs", {}).values():
            for image in node_output.get("images", []):
                if image.get("type") != "output":
                    continue
                async with self.session.get(f"{self.url}/view", params=image) as response:
                    result.images.append((image["filename"], await response.read()))
        return result

    async def _history(self, prompt_id: str) -> dict:
        import asyncio

        for _ in range(200):  # history is written just after the last event
            async with self.session.get(f"{self.url}/history/{prompt_id}") as response:
                entry = (await response.json()).get(prompt_id)
            if entry is not None:
                return entry
            await asyncio.sleep(0.05)
        raise PromptError(f"the server kept no history for prompt {prompt_id}")


def _progress_bar(data: dict) -> None:
    value, maximum = data.get("value", 0), max(data.get("max", 1), 1)
    filled = int(30 * value / maximum)
    sys.stderr.write(f"\r  node {data.get('node')}: [{'#' * filled}{'.' * (30 - filled)}] {value}/{maximum}")
    if value >= maximum:
        sys.stderr.write("\n")
    sys.stderr.flush()
