import pytest

from devkit.browser import Editor
from tests.support.server_fixtures import frontend_server  # noqa: F401  (a server per editor frontend)


@pytest.fixture(scope="module")
def editor(frontend_server):  # noqa: F811  (the fixture imported above)
    """The editor in headless Chromium on this module's frontend server (one page per module)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        ed = Editor(playwright, frontend_server.url)
        yield ed
        ed.close()
