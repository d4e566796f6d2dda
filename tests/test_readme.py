"""
The README's commands as a newcomer runs them: the test command is the one CI
runs, and no command that starts the daemon leaves a `twistd.pid` behind.
"""

import re
import shlex

import pytest

from tests.fixtures import REPO, Daemon

TWISTD = re.compile(r"twistd\b[^`\n]*")
DOCUMENTS = ["README.md", "etc/systemd/fulabd.service", "fulabd/admin.py", "fulabd/logs.py"]


def readme() -> str:
    return (REPO / "README.md").read_text()


def daemon_commands(text: str) -> list[str]:
    """Every `twistd …` in `text` that starts the daemon (not `--help`, not the bare plugin name)."""
    found = [match.group(0).strip() for match in TWISTD.finditer(text)]
    return [command for command in found
            if "fulab" in command.split() and "--help" not in command.split() and command != "twistd fulab"]


def test_the_readme_test_command_is_the_one_ci_runs():
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert f"\n    {ci}\n" in readme()


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_documented_daemon_command_writes_no_pid_file(document):
    commands = daemon_commands((REPO / document).read_text())
    assert commands, f"no twistd command found in {document}: update DOCUMENTS"
    for command in commands:
        options = command.split()[:command.split().index("fulab")]
        assert "--pidfile=" in options and ("-n" in options or "--nodaemon" in options), command


@pytest.mark.slow
def test_the_readme_run_command_starts_the_daemon_and_leaves_no_pid_file(tmp_path):
    [line] = [line for line in readme().splitlines() if line.startswith("    ") and ".venv/bin/twistd" in line]
    words = shlex.split(line.split(".venv/bin/twistd", 1)[1])
    words[words.index("--port") + 1] = "tcp:0:interface=127.0.0.1"  # port 5056 may be taken on this machine

    class AsWritten(Daemon):
        def command(self):
            return words

    daemon = AsWritten(tmp_path / "lab" / "remote", cwd=tmp_path).start()
    try:
        assert daemon.wait_for_log(r"web UI at ").endswith(f"http://127.0.0.1:{daemon.port}/fulab/lab/")
    finally:
        daemon.stop()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["lab"]  # the store, and no twistd.pid
