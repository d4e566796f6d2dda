import pytest

from tests.fixtures import Daemon


@pytest.fixture
def daemon(tmp_path):
    """A running daemon with an empty store under the test's temporary folder."""
    server = Daemon(tmp_path / "remote").start()
    yield server
    server.stop()
