"""Server fixtures (a real ComfyUI server on loopback, one per test module), shared by server and browser tests."""

import json

import pytest

from add_turbo.headless.server import ComfyServer
from devkit import host
from devkit.client import ComfyClient

# The editor frontends the browser tests run against: the one the host ships, and the newest.
FRONTENDS = ("bundled", "newest")
# Editor settings of a fresh user directory: no first-run tour or template browser over the canvas,
# the classic (canvas) node renderer; tests switch the Vue renderer on themselves.
EDITOR_SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.VueNodes.Enabled": False}


@pytest.fixture(scope="module")
def server(tiny_models, example_inputs):
    srv = host.start_server()
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    c = ComfyClient(server.url)
    yield c
    c.close()


def start_frontend_server(frontend: str, user_dir) -> ComfyServer:
    """A server with the given frontend and its own user directory, so that settings a test
    changes (the node renderer) never leak into another test or run."""
    extra = ["--user-directory", str(user_dir)]
    if frontend == "newest":
        if not (host.NEWEST_FRONTEND_ROOT / "index.html").exists():
            raise RuntimeError(f"frontend {host.NEWEST_FRONTEND} is not installed at {host.NEWEST_FRONTEND_ROOT}:"
                               f" run ADD_TURBO_HOST={host.HOST} scripts/build_host.sh")
        extra += ["--front-end-root", str(host.NEWEST_FRONTEND_ROOT)]
    settings = user_dir / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps(EDITOR_SETTINGS))
    srv = host.start_server(extra_args=tuple(extra))
    srv.frontend = frontend
    return srv


@pytest.fixture(scope="module", params=FRONTENDS)
def frontend_server(request, tmp_path_factory, tiny_models, example_inputs):
    """A server per editor frontend ("bundled", "newest"); tests using it run once for each."""
    srv = start_frontend_server(request.param, tmp_path_factory.mktemp(f"user-{request.param}"))
    yield srv
    srv.stop()
