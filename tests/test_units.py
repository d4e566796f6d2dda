"""
The shipped systemd units are valid: `systemd-analyze verify`, with ExecStart
pointed at binaries that exist here (the units name their installed paths).
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures import REPO

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
INSTALLED = {"fulabd.service": "/opt/fulabd/bin/twistd",
             "fulab-upload.service": "%h/.local/share/fulabd/bin/fulab-upload"}


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("unit", sorted(INSTALLED))
@pytest.mark.slow
def test_unit_verifies(tmp_path, unit):
    text = (REPO / "etc" / "systemd" / unit).read_text()
    assert INSTALLED[unit] in text
    (tmp_path / unit).write_text(text.replace(INSTALLED[unit], str(Path(sys.executable))))
    result = subprocess.run([SYSTEMD_ANALYZE, "verify", str(tmp_path / unit)], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_server_unit_runs_the_daemon_hardened_as_its_own_user():
    settings = [line.strip() for line in (REPO / "etc" / "systemd" / "fulabd.service").read_text().splitlines()]
    for expected in ("User=fulab", "Restart=always", "NoNewPrivileges=yes", "ProtectSystem=strict",
                     "ReadWritePaths=/var/lib/fulab", "PrivateTmp=yes", "ProtectHome=yes"):
        assert expected in settings, expected
    exec_start = next(line for line in settings if line.startswith("ExecStart="))
    assert " fulab --port 5056 --root /var/lib/fulab/remote $FULAB_OPTIONS" in exec_start
