"""The host's prompt queue, read only and under its lock (ADD Turbo Sample's queue_batch)."""

import sys

HOST_SYMBOLS = [
    ("execution", "PromptQueue.__init__", ("server",)),
    ("execution", "PromptQueue.get", ()),
    ("server", "PromptServer", None),  # read from sys.modules, never imported (see _prompt_queue)
]
# Queue items are (number, prompt id, prompt, extra data, outputs to execute[, sensitive]).
_ITEM_ID, _ITEM_PROMPT = 1, 2


def _prompt_queue():
    """The running server's PromptQueue, or None. The host's main imports its server module; where
    nothing did (nodes run in-process), there is no queue, and importing it here would start one."""
    server = sys.modules.get("server")
    instance = getattr(getattr(server, "PromptServer", None), "instance", None)
    return getattr(instance, "prompt_queue", None)


def queued_prompts() -> list[tuple[str, dict]]:
    """(prompt id, API-format prompt) of each prompt waiting in the host's queue, in run order."""
    queue = _prompt_queue()
    if queue is None:
        return []
    with queue.mutex:
        items = sorted(queue.queue, key=lambda item: item[0])
    return [(item[_ITEM_ID], item[_ITEM_PROMPT]) for item in items
            if len(item) > _ITEM_PROMPT and isinstance(item[_ITEM_PROMPT], dict)]


def live_prompt_ids() -> set:
    """The ids of the prompts waiting in the host's queue or running now."""
    queue = _prompt_queue()
    if queue is None:
        return set()
    with queue.mutex:
        items = list(queue.queue) + list(queue.currently_running.values())
    return {item[_ITEM_ID] for item in items if len(item) > _ITEM_ID}

