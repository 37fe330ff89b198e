import pytest

from devkit.browser import Editor
from tests.browser.helpers import exit_subgraphs
from tests.support.server_fixtures import frontend_server  # noqa: F401  (a server per editor frontend)


@pytest.fixture(scope="module")
def editor(frontend_server):  # noqa: F811  (the fixture imported above)
    """The editor in headless Chromium on this module's frontend server (one page per module)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        ed = Editor(playwright, frontend_server.url)
        yield ed
        ed.close()


@pytest.fixture
def renderer_view(editor, request):
    """Switch the node renderer for one test; back to the classic canvas and the root graph afterwards."""
    renderer = request.param
    yield renderer
    exit_subgraphs(editor)
    if renderer == "vue":
        editor.set_vue_nodes(False)
