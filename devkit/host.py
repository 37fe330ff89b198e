"""Locate and start the development ComfyUI host built by scripts/build_host.sh."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from add_turbo.headless.server import ComfyServer, ServerStartError, free_port

REPO = Path(__file__).resolve().parents[1]
HOME = Path(os.environ.get("ADD_TURBO_HOME", Path.home() / ".cache" / "add-turbo"))
# Which host (scripts/host_env.sh): 0.3.75, 0.33.0, or a user's checkout in COMFYUI_DIR ("custom").
HOST = os.environ.get("ADD_TURBO_HOST") or ("custom" if os.environ.get("COMFYUI_DIR") else "0.3.75")
HOST_ROOT = HOME / "hosts" / HOST
COMFY_DIR = HOST_ROOT / "ComfyUI"
BASE_DIR = HOST_ROOT / "base"
STUBS_DIR = HOST_ROOT / "stubs"
PYTHON = HOST_ROOT / "venv" / "bin" / "python"
# The newest editor frontend (installed by build_host.sh), served with --front-end-root.
NEWEST_FRONTEND = "1.58.1"
NEWEST_FRONTEND_ROOT = HOME / "frontends" / NEWEST_FRONTEND / "comfyui_frontend_package" / "static"
# Parity needs fp32 text encoders: ComfyUI keeps them in fp16 on CPU by default.
HOST_FLAGS = ["--cpu", "--fp32-text-enc", "--disable-api-nodes"]


def require_host() -> None:
    """Fail with the set-up command when the host has not been built."""
    if not (COMFY_DIR / "main.py").exists():
        raise RuntimeError(f"no ComfyUI host at {COMFY_DIR}: run ADD_TURBO_HOST={HOST} scripts/build_host.sh first")


def host_version() -> tuple[int, ...]:
    """The host's ComfyUI version, e.g. (0, 33, 0), read from its source tree."""
    text = (COMFY_DIR / "comfyui_version.py").read_text()
    version = text.split("__version__")[1].split('"')[1]
    return tuple(int(p) for p in version.split(".")[:3])


# On a GPU machine: the host's own device and precision choices, as a user gets them.
GPU_HOST_FLAGS = ["--disable-api-nodes"]


def base_args(base: Path = BASE_DIR, flags: list[str] = HOST_FLAGS) -> list[str]:
    """The host's command-line arguments: `flags`, then `base` as base directory with its own database."""
    return [*flags, "--base-directory", str(base), "--database-url", f"sqlite:///{base}/user/comfyui.db"]


def init_in_process(base: Path = BASE_DIR, flags: list[str] = HOST_FLAGS) -> None:
    """Import ComfyUI into this process (CPU unless other flags are given) and load every node incl. this pack."""
    require_host()
    if "nodes" in sys.modules and hasattr(sys.modules["nodes"], "NODE_CLASS_MAPPINGS"):
        return
    # transformers caches its "is torchvision installed" probe: take it before the import-only
    # stand-in goes on sys.path, or diffusers would try to use the stand-in.
    from transformers.utils import import_utils

    import_utils.is_torchvision_available()
    sys.path[:0] = [str(COMFY_DIR), str(STUBS_DIR)]
    argv = sys.argv
    sys.argv = [str(COMFY_DIR / "main.py"), *base_args(base, flags)]
    try:
        import comfy.options

        comfy.options.enable_args_parsing()
        import comfy.cli_args  # noqa: F401  (parses sys.argv now)
    finally:
        sys.argv = argv
    import asyncio

    import folder_paths

    folder_paths.set_output_directory(str(base / "output"))
    import nodes

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))


def start_server(base: Path = BASE_DIR, extra_args: tuple[str, ...] = (), env: dict | None = None) -> ComfyServer:
    """The development host as a server process on a free loopback port, ready to take requests.

    Started with the pack's one launcher (add_turbo.headless.server), the host's interpreter, its stand-ins and
    `base` as base directory and `env` added to its environment; output goes to the host's
    logs/server-PORT.log. Stop it with `stop()`.
    When it does not start it is stopped, and the RuntimeError raised holds its log.
    """
    require_host()
    port = free_port()
    log_dir = HOST_ROOT / "logs"
    log_dir.mkdir(exist_ok=True)
    server = ComfyServer(COMFY_DIR, [*base_args(base), *extra_args], port=port, python=str(PYTHON),
                         log_path=log_dir / f"server-{port}.log",
                         env={"PYTHONPATH": str(STUBS_DIR), "PYTHONUNBUFFERED": "1", **(env or {})})
    try:
        return server.wait_ready(timeout=120)
    except ServerStartError as error:
        server.stop()
        raise RuntimeError(f"{error}:\n{server.log()}") from error
