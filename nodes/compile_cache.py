"""Where the loader's compiled graphs live on disk, and the key that keeps one checkpoint's apart.

torch keeps what torch.compile produces (inductor's FX graph cache, the AOTAutograd cache, the
compiled C++ / Triton kernels) in the folder TORCHINDUCTOR_CACHE_DIR, by default
/tmp/torchinductor_<user>, which many systems empty at boot. The pack points torch at a folder that
survives restarts, so a new start with the same model, size and options loads the compiled graphs
instead of compiling them again.

The folder, first match wins:
  1. ADD_TURBO_COMPILE_CACHE, if set;
  2. TORCHINDUCTOR_CACHE_DIR, if the user set it: kept as it is;
  3. <ComfyUI user directory>/__cache/add_turbo_compile. The user directory lasts across restarts
     (ComfyUI empties its temp directory at every start), follows --user-directory, and its
     "__" system folders are never served over HTTP: the cache holds shared libraries that torch
     loads, which the userdata endpoints must not be able to write.

The folder is set only while the pack's compiled functions run (torch compiles inside those
calls), with torch's own scoped setter; other compiled code in the process keeps torch's settings.

What a new start still does: torch traces the model again (Dynamo, and AOTAutograd where its
cache refuses the graph) and looks the graphs up; code generation and kernel compilation are skipped.

Key: torch's cache keys cover the graph, the shapes, the options that change code and the torch
build, but not the weights' values. On CPU the loader asks inductor to freeze the UNet's weights
into the graph, so each key is also tagged (torch.compiler.config.cache_key_tag) with the
checkpoint's identity (path, size and modification time of its files) and the loader options:
another checkpoint, or the same file replaced, never loads this one's graphs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

ENV = "ADD_TURBO_COMPILE_CACHE"
TORCH_ENV = "TORCHINDUCTOR_CACHE_DIR"
FOLDER_NAME = "add_turbo_compile"
KEY_VERSION = 1  # bump to orphan every entry written by an older pack


def _torch_scoped_dir():
    """torch's context manager that sets TORCHINDUCTOR_CACHE_DIR for a block (None when absent)."""
    try:
        from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir
    except ImportError:
        return None
    return temporary_cache_dir


def user_cache_dir() -> str | None:
    """TORCHINDUCTOR_CACHE_DIR as the user set it, or None.

    torch writes its default into the environment on first use, so a value equal to that default
    is torch's, not the user's.
    """
    value = os.environ.get(TORCH_ENV)
    if not value:
        return None
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    return None if os.path.abspath(value) == os.path.abspath(default_cache_dir()) else value


def default_folder() -> str:
    import folder_paths

    return os.path.join(folder_paths.get_system_user_directory("cache"), FOLDER_NAME)


def checkpoint_identity(path: str) -> list[tuple[str, int, int]]:
    """(real path, size, mtime in ns) of the checkpoint file, or of every file of a diffusers folder."""
    path = os.path.realpath(path)
    if os.path.isdir(path):
        files = sorted(os.path.join(root, name) for root, _, names in os.walk(path, followlinks=True) for name in names)
    else:
        files = [path]
    return [(os.path.realpath(f), (st := os.stat(f)).st_size, st.st_mtime_ns) for f in files]


def cache_tag(path: str, options: dict) -> str:
    """The tag added to every torch cache key of a model: checkpoint identity and loader options."""
    key = json.dumps({"version": KEY_VERSION, "checkpoint": checkpoint_identity(path), "options": options},
                     sort_keys=True)
    return "add-turbo-" + hashlib.sha256(key.encode()).hexdigest()[:24]


def torch_caches_off() -> str | None:
    """Why torch will not cache compiled graphs at all (the user's setting), or None."""
    import torch._inductor.config as inductor_config

    if torch.compiler.config.force_disable_caches:
        return "TORCHINDUCTOR_FORCE_DISABLE_CACHES is set"
    if not inductor_config.fx_graph_cache:
        return "TORCHINDUCTOR_FX_GRAPH_CACHE is off"
    return None


@dataclass(frozen=True)
class CompileCache:
    """Where (folder, or None to keep the user's TORCHINDUCTOR_CACHE_DIR) and under which tag a model's
    compiled graphs are cached."""

    folder: str | None
    tag: str

    @contextlib.contextmanager
    def scope(self):
        """torch's cache folder and key tag set for the block (a compiled call: torch compiles inside it)."""
        with contextlib.ExitStack() as stack:
            if self.folder is not None:
                stack.enter_context(_torch_scoped_dir()(self.folder))
            stack.enter_context(torch.compiler.config.patch(cache_key_tag=self.tag))
            yield

    def wrap(self, fn):
        """`fn` (a torch.compile'd callable) run inside `scope()`."""

        def in_scope(*args, **kwargs):
            with self.scope():
                return fn(*args, **kwargs)

        return in_scope

    def where(self) -> str:
        return self.folder if self.folder is not None else os.environ.get(TORCH_ENV, "")


def for_checkpoint(path: str, options: dict) -> CompileCache | None:
    """The on-disk compile cache for this checkpoint and these options, or None (warned) when it cannot be used."""
    if not hasattr(torch.compiler, "config") or not hasattr(torch.compiler.config, "cache_key_tag") \
            or _torch_scoped_dir() is None:
        log.warning("ADD Turbo: torch %s cannot key its compile cache by checkpoint (no cache_key_tag or "
                    "temporary_cache_dir): compiled graphs are not kept across restarts", torch.__version__)
        return None
    if (reason := torch_caches_off()) is not None:
        log.warning("ADD Turbo: %s: compiled graphs are not kept, every start compiles again", reason)
        return None
    tag = cache_tag(path, options)
    if torch.compiler.config.cache_key_tag:  # the user's own tag (TORCH_COMPILE_CACHE_KEY_TAG) still applies
        tag = f"{torch.compiler.config.cache_key_tag}:{tag}"
    if os.environ.get(ENV):
        folder = os.path.abspath(os.path.expanduser(os.environ[ENV]))
    elif user_cache_dir() is not None:
        return CompileCache(None, tag)  # the user's TORCHINDUCTOR_CACHE_DIR, as it is
    else:
        folder = default_folder()
    try:
        os.makedirs(folder, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(f"no write access to {folder}")
    except OSError as e:
        log.warning("ADD Turbo: compile cache %s cannot be used (%s): compiled graphs are not kept across "
                    "restarts; set %s to a writable folder", folder, e, ENV)
        return None
    return CompileCache(folder, tag)


def counts() -> dict[str, int]:
    """torch's counters so far: graphs traced, and the FX graph cache's hits, misses and bypasses
    (graphs torch refused to cache)."""
    from torch._dynamo.utils import counters

    inductor = counters["inductor"]
    return {"graphs": counters["stats"]["unique_graphs"],
            **{k: inductor[f"fxgraph_cache_{k}"] for k in ("hit", "miss", "bypass")}}
