"""
The twistd plugin, its options, the packaging that ships it, and `fulab status`.
"""

import subprocess
import sys
import zipfile

import pytest
from twisted.python import usage

from fulabd import admin
from fulabd.tap import Options, endpoint_description
from tests.fixtures import REPO


def parse(*argv):
    options = Options()
    options.parseOptions(list(argv))
    return options


def test_defaults(monkeypatch):
    monkeypatch.delenv("LAB_UPLOAD_ROOT", raising=False)
    options = parse()
    assert options["endpoints"] == ["tcp:5056:interface=127.0.0.1"]
    assert options["root"] == "lab/remote"
    assert options["active-window"] == 3600.0 and options["restart-interval"] == 10.0
    assert options["max-message-size"] == 64 * 1024 * 1024


def test_root_comes_from_the_environment_unless_given(monkeypatch):
    monkeypatch.setenv("LAB_UPLOAD_ROOT", "/srv/lab")
    assert parse()["root"] == "/srv/lab"
    assert parse("--root", "here")["root"] == "here"


def test_port_number_or_endpoint_string():
    assert parse("--port", "6000", "--interface", "::")["endpoints"] == ["tcp:6000:interface=\\:\\:"]
    assert parse("--port", "unix:/tmp/fulab.sock")["endpoints"] == ["unix:/tmp/fulab.sock"]
    assert endpoint_description("5056", "0.0.0.0") == "tcp:5056:interface=0.0.0.0"


@pytest.mark.parametrize("argv", [["--active-window", "0"], ["--max-message-size", "-1"], ["--restart-interval", "x"]])
def test_bad_values_are_usage_errors(argv):
    with pytest.raises((usage.UsageError, ValueError)):
        parse(*argv)


def test_a_root_that_cannot_be_created_or_written_is_refused(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(usage.UsageError, match=r"is a file, not a folder"):
        parse("--root", str(tmp_path / "file" / "remote"))
    with pytest.raises(usage.UsageError, match=r"cannot create files in /proc"):
        parse("--root", "/proc/fulab-remote")
    assert parse("--root", str(tmp_path / "new" / "remote"))["root"] == str(tmp_path / "new" / "remote")
    assert not (tmp_path / "new").exists(), "checking the root creates nothing"


@pytest.mark.parametrize("argv, reason", [
    (["--port", "abc"], "is not a port number or a Twisted endpoint string"),
    (["--port", "70000"], "the port must be a number from 0 to 65535"),
    (["--port", "tcp:port=99999:interface=127.0.0.1"], "the port must be a number from 0 to 65535"),
    (["--listen", "tcp:-1"], "the port must be a number from 0 to 65535"),
    (["--listen", "nonsense:5056"], "Unknown endpoint type"),
    (["--tls-port", "65536"], "the port must be a number from 0 to 65535"),
])
def test_malformed_ports_and_endpoints_are_refused(argv, reason):
    with pytest.raises(usage.UsageError, match=reason):
        parse(*argv)


def twistd(*argv, cwd):
    return subprocess.run([sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
                           "fulab", *argv], capture_output=True, text=True, cwd=cwd, env={"PYTHONPATH": str(REPO)},
                          timeout=60)


@pytest.mark.slow
@pytest.mark.parametrize("argv, reason", [
    (["--port", "abc"], "--port 'abc' is not a port number or a Twisted endpoint string"),
    (["--port", "70000"], "--port 70000: the port must be a number from 0 to 65535"),
    (["--root", "/proc/fulab-remote"], "cannot use --root /proc/fulab-remote: cannot create files in /proc"),
    (["--bogus"], "option --bogus not recognized"),
])
def test_twistd_refuses_to_start_in_one_line_with_exit_status_1(tmp_path, argv, reason):
    result = twistd("--root", str(tmp_path / "remote"), *argv, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == "" and "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("twistd fulab: ") and reason in line, line
    assert not (tmp_path / "remote").exists()


@pytest.mark.slow
def test_twistd_lists_the_plugin():
    result = subprocess.run([sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--help"],
                            capture_output=True, text=True, cwd=REPO, env={"PYTHONPATH": str(REPO)})
    assert "fulab" in result.stdout


@pytest.mark.slow
def test_wheel_ships_the_plugin_and_the_ui_but_no_plugin_cache(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                    "-w", str(tmp_path), str(REPO)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("fulabd-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "twisted/plugins/fulab_plugin.py" in names
    assert not any(name.endswith("dropin.cache") for name in names)
    assert not any(name.startswith("twisted/__init__") or name == "twisted/plugins/__init__.py" for name in names)
    assert "fulabd/store/store.py" in names and "fulabd/data/prices.json" in names


@pytest.mark.slow
def test_status_command_prints_the_running_daemon(daemon, capsys):
    assert admin.main(["status", "--url", daemon.http]) == 0
    out = capsys.readouterr().out
    assert "running: True" in out and f"port: {daemon.port}" in out


def test_status_command_says_what_to_do_when_nothing_answers(capsys):
    assert admin.main(["status", "--url", "http://127.0.0.1:9", "--timeout", "5"]) == 1
    assert "twistd -n --pidfile= fulab" in capsys.readouterr().err
