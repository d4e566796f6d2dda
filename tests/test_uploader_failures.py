"""
What `fulab-upload` says and how it exits when things go wrong: a bad command
line, no server, a refused token, a line the server refuses, a daemon restart,
Ctrl-C.  The real command against the real daemon, except for the command line.
"""

import signal

import pytest

from fulabd.uploader import cli
from tests.fixtures import Daemon, Uploader, free_port, sample_files

UPLOAD = "/fulab/lab/upload/ws"


def test_an_unknown_flag_is_named_by_argparse(capsys):
    with pytest.raises(SystemExit) as exit:
        cli.upload_args(["--path", "x.jsonl", "--bogus"])
    assert exit.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_neither_path_nor_watch_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit:
        cli.upload_args([])
    assert exit.value.code == 2
    assert "give --path FILE or --watch DIR" in capsys.readouterr().err


def test_a_watch_folder_that_does_not_exist_is_refused_at_start(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.upload_args(["--watch", str(tmp_path), "--watch", str(tmp_path / "nowhere")])
    assert exit.value.code == 2
    assert f"--watch {tmp_path / 'nowhere'}: no such folder" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("url, said", [
    ("http://lab:5056/fulab/lab/upload/ws", "'http://lab:5056/fulab/lab/upload/ws' is not a WebSocket URL: "
                                            "use ws://lab:5056/fulab/lab/upload/ws"),
    ("HTTPS://lab/fulab/lab/upload/ws", "use wss://lab/fulab/lab/upload/ws"),
    ("lab:5056", "'lab:5056' is not a WebSocket URL: give ws://HOST:PORT/fulab/lab/upload/ws"),
])
def test_a_url_that_is_not_a_websocket_url_is_a_usage_error_naming_the_one_to_give(tmp_path, capsys, url, said):
    session = tmp_path / "s.jsonl"
    session.write_text("{}\n")
    with pytest.raises(SystemExit) as exit:
        cli.upload_args(["--url", url, "--path", str(session)])
    assert exit.value.code == 2
    assert said in capsys.readouterr().err


def test_a_path_that_is_a_folder_or_missing_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.upload_args(["--path", str(tmp_path)])
    assert exit.value.code == 2
    said = capsys.readouterr().err
    assert f"--path {tmp_path} is a folder: --path takes one session file; --watch {tmp_path}" in said
    with pytest.raises(SystemExit) as exit:
        cli.upload_args(["--path", str(tmp_path / "nowhere.jsonl")])
    assert exit.value.code == 2
    assert "nowhere.jsonl: no such file" in capsys.readouterr().err


@pytest.mark.slow
def test_once_against_a_closed_port_says_why_and_gives_up_with_exit_1(tmp_path):
    url = f"ws://127.0.0.1:{free_port()}{UPLOAD}"
    uploader = Uploader("--url", url, "--path", str(sample_files()[0]), "--once", "--connect-timeout", "2").start()
    assert uploader.wait() == 1
    output = "\n".join(uploader.output)
    assert f"could not connect to {url}: connection refused" in output
    assert f"fulab doctor {url}" in output
    assert "gave up: no working connection" in output and "within 2 s" in output
    assert output.count("could not connect") == 1, "one line per reason, not per try"


@pytest.mark.slow
def test_a_refused_token_is_named_backed_off_and_never_called_connected(tmp_path):
    (tmp_path / "tokens").write_text("a-token-of-the-right-length-0123 alice\n")
    server = Daemon(tmp_path / "remote", "--token-file", str(tmp_path / "tokens")).start()
    try:
        uploader = Uploader("--url", server.url + UPLOAD, "--path", str(sample_files()[0]), "--token", "wrong",
                            "--once", "--connect-timeout", "4").start()
        assert uploader.wait() == 1
        output = "\n".join(uploader.output)
        assert "the server refused the token (unauthorized); check --token / FULAB_TOKEN" in output
        assert "fulab-upload: connected" not in output, "no misleading 'connected'"
        assert "fulab-upload: server refused " not in output, "the refusal is the connection's, not a session's"
        assert output.count("refused the token") == 1
        tries = [line for line in server.log if "refused GET /fulab/lab/upload/ws" in line or "wrong token" in line]
        assert 1 <= len(tries) <= 5, "backs off: 0.5, 1, 2 s... not a retry a second"
    finally:
        server.stop()


@pytest.mark.slow
def test_a_mistyped_upload_path_is_said_once_as_a_connection_failure(tmp_path):
    server = Daemon(tmp_path / "remote").start()
    try:
        uploader = Uploader("--url", server.url + "/fulab/lab/uplaod/ws", "--path", str(sample_files()[0]),
                            "--once", "--connect-timeout", "4").start()
        assert uploader.wait() == 1
        output = "\n".join(uploader.output)
        assert output.count("the URL's path is not an upload endpoint (invalid-path); use a URL ending in "
                            "/fulab/lab/upload/ws") == 1, output
        assert "unexpected message" not in output and "stopped until" not in output, output
        assert "gave up: no working connection" in output
    finally:
        server.stop()


@pytest.mark.slow
def test_once_exits_1_and_names_the_session_when_the_server_refuses_a_line(tmp_path):
    server = Daemon(tmp_path / "remote", "--max-message-size", "100000").start()
    session = tmp_path / "limited.jsonl"
    lines = [f'{{"type":"user","n":{index},"text":"{"x" * (200_000 if index == 5 else 100)}"}}' for index in range(30)]
    session.write_text("".join(line + "\n" for line in lines))
    try:
        uploader = Uploader("--url", server.url + UPLOAD, "--path", str(session), "--source", "claude",
                            "--once").start()
        assert uploader.wait() == 1
        output = "\n".join(uploader.output)
        assert "done, but 1 session(s) stopped short of the file's end:" in output
        assert f"  limited ({session}): too-large: line 5 is" in output
        assert "done:" not in output
        assert (server.root / "limited.jsonl").read_text() == "".join(line + "\n" for line in lines[:5])
    finally:
        server.stop()


@pytest.mark.slow
def test_once_with_nothing_to_send_is_done_at_once(tmp_path):
    """An empty folder, or a file with no complete line yet: nothing to wait for (it waited forever)."""
    server = Daemon(tmp_path / "remote").start()
    (tmp_path / "empty").mkdir()
    (tmp_path / "partial.jsonl").write_text('{"type":"user","partial')
    try:
        for where in (["--watch", str(tmp_path / "empty")], ["--path", str(tmp_path / "partial.jsonl")]):
            uploader = Uploader("--url", server.url + UPLOAD, *where, "--once").start()
            assert uploader.wait() == 0, uploader.output
            assert any("done: 0 lines" in line for line in uploader.output), uploader.output
    finally:
        server.stop()


@pytest.mark.slow
def test_a_daemon_restart_reads_server_restarted_and_ctrl_c_says_what_was_done(tmp_path):
    server = Daemon(tmp_path / "remote").start()
    session = sample_files()[0]
    try:
        uploader = Uploader("--url", server.url + UPLOAD, "--path", str(session)).start()
        uploader.wait_for_output(r"live ")
        server.restart(kill=False)
        uploader.wait_for_output(r"server restarted, resuming 1 session\(s\)")
        server.restart(kill=True)
        uploader.wait_for_output(r"server restarted, resuming 1 session\(s\)", count=2)
        uploader.process.send_signal(signal.SIGINT)
        assert uploader.wait() == 0
        lines = len(session.read_bytes().split(b"\n")) - 1
        assert uploader.output[-1] == (f"fulab-upload: stopped: 1 session(s) live, {lines:,} lines acknowledged in "
                                       "this run, 0 line(s) not acknowledged")
        output = "\n".join(uploader.output)
        assert "uncleanly" not in output and "connection lost" not in output
    finally:
        server.stop()


@pytest.mark.slow
def test_a_par_to_a_closed_port_gives_up_after_a_few_tries_with_exit_1(tmp_path):
    par = tmp_path / "par.edn"
    par.write_text('{:title "t" :tags [] :questions {}}')
    url = f"ws://127.0.0.1:{free_port()}{UPLOAD}"
    uploader = Uploader("par", "--url", url, "--session", "s1", "--file", str(par)).start()
    assert uploader.wait() == 1
    output = "\n".join(uploader.output)
    assert f"gave up after 3 tries; run: fulab doctor {url}" in output
    assert "Traceback" not in output and output.count("could not connect") == 1


@pytest.mark.slow
def test_a_stop_while_the_server_is_away_says_what_was_not_sent(tmp_path):
    """Lines written while the daemon was down were not in flight: the stop said nothing of them."""
    server = Daemon(tmp_path / "remote").start()
    session = tmp_path / "s.jsonl"
    session.write_text('{"n":0}\n')
    try:
        uploader = Uploader("--url", server.url + UPLOAD, "--path", str(session)).start()
        uploader.wait_for_output(r"live ")
    finally:
        server.stop()
    with open(session, "a") as f:
        f.write('{"n":1}\n{"n":2}\n')
    uploader.process.send_signal(signal.SIGINT)
    uploader.wait()
    assert uploader.output[-1].endswith("0 line(s) not acknowledged, 16 bytes of the files not sent yet; they are "
                                        "sent on the next start"), uploader.output


@pytest.mark.slow
def test_older_files_left_alone_at_start_are_counted_with_what_to_do(tmp_path):
    import os

    server = Daemon(tmp_path / "remote").start()
    folder = tmp_path / "sessions"
    folder.mkdir()
    old = folder / "old.jsonl"
    old.write_text('{"n":0}\n')
    os.utime(old, (0, 0))
    try:
        uploader = Uploader("--url", server.url + UPLOAD, "--watch", str(folder), "--once").start()
        assert uploader.wait() == 0, uploader.output
        assert any(line.endswith("1 session file(s) not written in the last 60 minutes were not checked; to check "
                                 "them against the server (lines written while the uploader was not running), add "
                                 "--backfill") for line in uploader.output), uploader.output
        assert not (server.root / "old.jsonl").exists()
    finally:
        server.stop()
