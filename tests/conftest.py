import pytest

from tests.fixtures import Daemon, chromium_missing, start_chromium


@pytest.fixture
def daemon(tmp_path):
    """A running daemon with an empty store under the test's temporary folder."""
    server = Daemon(tmp_path / "remote").start()
    yield server
    server.stop()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Remember each phase's report on the test item, so fixtures can tell a failed test in teardown."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def browser(request, tmp_path):
    """Headless Chromium; when the test fails, its last screen is saved as `<tmp_path>/failure.png`."""
    missing = chromium_missing()
    if missing:
        pytest.skip(missing)
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
