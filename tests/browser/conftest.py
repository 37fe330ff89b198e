from tests.support.server_fixtures import frontend_server  # noqa: F401  (a server per editor frontend)
