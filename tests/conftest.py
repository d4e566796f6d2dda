import pytest

from tests.fixtures import CertificateAuthority, Daemon, Nginx


@pytest.fixture
def daemon(tmp_path):
    """A running daemon with an empty store under the test's temporary folder."""
    server = Daemon(tmp_path / "remote").start()
    yield server
    server.stop()


@pytest.fixture
def ca(tmp_path):
    """A root and intermediate CA issuing test certificates (root only is trusted by clients)."""
    return CertificateAuthority(tmp_path / "pki")


@pytest.fixture
def nginx(tmp_path, daemon, ca):
    """The real nginx with the shipped config (and the old paths), on TLS, in front of `daemon`."""
    cert, key = ca.issue("nginx")
    proxy = Nginx(tmp_path / "nginx", daemon.port, cert, key, old_paths=True).start()
    yield proxy
    proxy.stop()
