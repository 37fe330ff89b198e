"""Server fixtures (a real ComfyUI server on loopback, one per test module), shared by server and browser tests."""

import socket

import pytest

from tests.support import host
from tests.support.client import ComfyClient


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_models, example_inputs):
    srv = host.Server(_free_port()).wait_ready()
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    c = ComfyClient(server.url)
    yield c
    c.close()
