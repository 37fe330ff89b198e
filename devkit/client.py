"""The pack's client (add_turbo.headless.client) made synchronous for the tests, benchmarks and scripts.

add_turbo.headless.client is the one implementation of ComfyUI's HTTP and websocket protocol; `ComfyClient`
runs it on an event loop of its own, in a thread of its own, so that code without asyncio (or code
inside another running loop, such as Playwright's synchronous API) can queue prompts, follow their
events and fetch their images.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from add_turbo.headless.client import Client, PromptError, ServerUnreachable  # noqa: F401  (re-exported for callers)


@dataclass
class PromptRun:
    """What the websocket said about one prompt, up to the event that ended it."""

    prompt_id: str
    events: list = field(default_factory=list)  # (type, data) websocket messages for this prompt
    error: dict | None = None  # the execution_error data, if any

    def of_type(self, kind: str) -> list:
        """The data of this prompt's events of type `kind`, in order."""
        return [data for t, data in self.events if t == kind]


class ComfyClient:
    """A client of the ComfyUI server at `url`; close it with `close()` or use it in a `with` block.

    events: follow the server's websocket (needed by `run`, `follow` and `events`); False for plain
    HTTP requests only.
    """

    def __init__(self, url: str, events: bool = True):
        self.url = url.rstrip("/")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="comfy-client", daemon=True)
        self._thread.start()
        self._client = Client(self.url, progress=lambda data: None, events=events)
        try:
            self._call(self._client.__aenter__())
        except BaseException:
            self._stop_loop()
            raise

    def _call(self, awaitable, timeout: float | None = None):
        async def wait():
            return await (asyncio.wait_for(awaitable, timeout) if timeout is not None else awaitable)

        return asyncio.run_coroutine_threadsafe(wait(), self._loop).result()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def close(self) -> None:
        """Close the connections to the server."""
        if not self._loop.is_closed():
            try:
                self._call(self._client.__aexit__(None, None, None))
            finally:
                self._stop_loop()

    def __enter__(self) -> ComfyClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def queue(self, prompt: dict) -> str:
        """Queue an API-format prompt; its prompt id. PromptError when the server refuses it
        (its JSON answer in `details`)."""
        return self._call(self._client.queue(prompt))

    def run(self, prompt: dict, timeout: float = 600) -> PromptRun:
        """Queue `prompt` and read websocket events until it finishes or fails (`error` set)."""
        try:
            prompt_id = self.queue(prompt)
        except PromptError as error:
            raise ValueError(f"prompt rejected: {error}") from error
        return self.follow(prompt_id, timeout)

    def follow(self, prompt_id: str, timeout: float = 600) -> PromptRun:
        """Read websocket events of an already queued prompt until it finishes or fails (`error` set)."""

        async def collect() -> PromptRun:
            run = PromptRun(prompt_id)
            async for kind, data in self._client.events(prompt_id):
                run.events.append((kind, data))
                if kind == "execution_error":
                    run.error = data
            return run

        try:
            return self._call(collect(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout}s") from None

    def events(self, prompt_id: str, timeout: float = 600) -> Iterator[tuple[str, dict]]:
        """(type, data) of each websocket event of a queued prompt as it arrives, up to the one that ends
        it; at most `timeout` seconds for each. Other calls may be made between two events."""
        events = self._client.events(prompt_id)
        try:
            while True:
                try:
                    yield self._call(events.__anext__(), timeout)
                except StopAsyncIteration:
                    return
        finally:
            if not self._loop.is_closed():
                self._call(events.aclose())

    def history(self, prompt_id: str | None = None) -> dict:
        """The server's history: every prompt's entry by id, or `prompt_id`'s entry (waiting for it a little)."""
        return self._call(self._client.history(prompt_id))

    def images(self, prompt_id: str) -> list[bytes]:
        """The bytes (PNG) of every image the prompt's output nodes wrote, saved ones and previews."""
        return [data for _, data in self._call(self._client.images(prompt_id, saved_only=False))]

    def view(self, image: dict) -> bytes:
        """The bytes of one image of a history entry's outputs ({"filename", "subfolder", "type"})."""
        return self._call(self._client.view(image))

    def object_info(self) -> dict:
        """Every node's definition."""
        return self._call(self._client.object_info())

    def get_json(self, path: str) -> dict:
        """GET a JSON endpoint of the server (`path` such as "/queue" or "/system_stats")."""
        return self._call(self._client.get_json(path))

    def interrupt(self, prompt_id: str | None = None) -> None:
        """Stop the running prompt (only if it is `prompt_id`, when given)."""
        self._call(self._client.interrupt(prompt_id))

    def free(self, unload_models: bool = False) -> None:
        """Free the server's cached memory, and unload its models too when asked."""
        self._call(self._client.free(unload_models))
