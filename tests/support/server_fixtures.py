"""Server fixtures (a real ComfyUI server on loopback, one per test module), shared by server and browser tests."""

import pytest

from tests.support import host
from tests.support.client import ComfyClient


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
