import subprocess

import pytest

from tests.fixtures import CertificateAuthority, Daemon, Nginx, Uploader, chromium_missing, skip_without, start_chromium
from tests.memory import Lab


def failed(request) -> bool:
    report = getattr(request.node, "report_call", None)
    return report is not None and report.failed


@pytest.fixture(autouse=True)
def no_uploader_left_running():
    """Kill every `fulab-upload` a test started, whether the test passed or not."""
    yield
    while Uploader.running:
        Uploader.running.pop().kill()


@pytest.fixture(autouse=True)
def fast_tests_start_no_process(request, monkeypatch):
    """The fast tier (`-m "not slow"`) runs in memory: a test that starts a process must be marked slow."""
    if request.node.get_closest_marker("slow") is not None:
        return

    class Refused(subprocess.Popen):
        def __init__(self, args, *rest, **options):
            raise AssertionError(f"{request.node.nodeid} starts a process ({args!r}): mark it @pytest.mark.slow")

    monkeypatch.setattr(subprocess, "Popen", Refused)


@pytest.fixture
def daemon(request, tmp_path):
    """A running daemon with an empty store under the test's temporary folder (its log shown if the test fails)."""
    server = Daemon(tmp_path / "remote").start()
    yield server
    server.stop()
    if failed(request):
        print("daemon log:\n" + "\n".join(server.log[-80:]))


@pytest.fixture
def lab(tmp_path):
    """The daemon's site in memory (see tests/memory.py), with an empty store under the test's temporary folder."""
    site = Lab(tmp_path / "remote")
    yield site
    site.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Remember each phase's report on the test item, so fixtures can tell a failed test in teardown."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def browser(request, tmp_path):
    """Headless Chromium; when the test fails, its last screen is saved as `<tmp_path>/failure.png`."""
    skip_without(chromium_missing())
    driver = start_chromium(tmp_path / "chromium-profile")
    try:
        yield driver
    finally:
        report = getattr(request.node, "report_call", None)
        if report is None or report.failed:
            screenshot = tmp_path / "failure.png"
            driver.save_screenshot(str(screenshot))
            print(f"browser screenshot saved to {screenshot}")
        driver.quit()


@pytest.fixture
def ca(tmp_path):
    """A root and intermediate CA issuing test certificates (root only is trusted by clients)."""
    return CertificateAuthority(tmp_path / "pki")


@pytest.fixture
def nginx(request, tmp_path, daemon, ca):
    """The real nginx with the shipped config (and the old paths), on TLS, in front of `daemon`."""
    cert, key = ca.issue("nginx")
    proxy = Nginx(tmp_path / "nginx", daemon.port, cert, key, old_paths=True).start()
    yield proxy
    proxy.stop()
    if failed(request):
        print("nginx error log:\n" + (proxy.folder / "error.log").read_text()[-8000:])
