"""Log a message once per owner (a model, a VAE, a graph) and message, however often it recurs.

A fallback or an obstacle holds for every run until something changes: logging it on every run would
drown the log, logging it never would hide it.
"""

from __future__ import annotations

import logging
import weakref

_SEEN_BY_OWNER: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # owner -> messages logged
_SEEN: set = set()  # messages logged for no owner


def log_once(logger: logging.Logger, message: str, owner=None, level: int = logging.INFO) -> bool:
    """Log `message` at `level` unless it was logged for `owner` before (owner None: once per process).
    Returns whether it was logged now. Owners are held weakly: a freed model forgets its messages."""
    seen = _SEEN if owner is None else _SEEN_BY_OWNER.setdefault(owner, set())
    if message in seen:
        return False
    seen.add(message)
    logger.log(level, message)
    return True
