"""Installing: the service install passes systemd-analyze verify and rates OK or better in
systemd-analyze security (Debian's systemd package; no running systemd needed), and the README's
first command runs the server from a virtual environment."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port
from tests.gearclient import Conn, wait_for

pytestmark = [pytest.mark.shardgear_only, pytest.mark.slow]


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI"):
            raise AssertionError(f"{tool} is missing: scripts/test installs it")
        pytest.skip(f"{tool} is not installed")
    return path


@pytest.mark.timeout(900)
def test_the_service_install_verifies_and_rates_ok(tmp_path: Path) -> None:
    _need("systemd-analyze")
    root = tmp_path / "root"
    proc = subprocess.run(
        [str(REPO / "systemd/install"), "--root", str(root), "--check"],
        capture_output=True,
        text=True,
        timeout=800,
        # the pure-Python build: what is checked here is the install, not the compiler (the
        # compiled build is what .ci/run and the rest of the suite use)
        env={**os.environ, "SHARDGEAR_PURE": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for path in (
        "opt/shardgear/bin/shardgear",
        "etc/systemd/system/shardgear.service",
        "etc/systemd/system/shardgear.socket",
        "usr/lib/sysusers.d/shardgear.conf",
        "etc/shardgear/shardgear.toml",
    ):
        assert (root / path).exists(), path
    exposure = re.search(r"exposure level for shardgear.service: ([\d.]+) (\w+)", proc.stdout)
    assert exposure is not None, proc.stdout
    assert float(exposure.group(1)) < 5.0 and exposure.group(2) in ("SAFE", "OK")
    unit = (root / "etc/systemd/system/shardgear.service").read_text()
    assert "ExecStart=/opt/shardgear/bin/shardgear --config /etc/shardgear/shardgear.toml" in unit
    # the installed package runs from its own environment
    out = subprocess.run(
        [str(root / "opt/shardgear/bin/shardgear"), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and out.stdout.startswith("shardgear ")


def test_verify_fails_for_a_unit_whose_command_is_missing(tmp_path: Path) -> None:
    """The check above can fail: the same verify on a unit that points at nothing."""
    analyze = _need("systemd-analyze")
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "usr/lib").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd", root / "usr/lib/systemd", symlinks=True)
    (root / "lib").symlink_to("usr/lib")
    unit = (REPO / "systemd/shardgear.service").read_text()
    (root / "etc/systemd/system/shardgear.service").write_text(unit)
    proc = subprocess.run(
        [analyze, "verify", f"--root={root}", "shardgear.service"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "/opt/shardgear/bin/shardgear" in proc.stderr


@pytest.mark.timeout(900)
def test_the_readme_command_serves_from_a_virtual_environment(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    assert "scripts/serve" in readme and "scripts/test" in readme
    port = free_port()
    proc = subprocess.Popen(
        [str(REPO / "scripts/serve"), "--listen", "127.0.0.1", "--port", str(port),
         "--fronts", "1", "--shards", "1", "--state-dir", str(tmp_path)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    try:
        def answers() -> bool:
            try:
                with Conn(f"127.0.0.1:{port}", timeout=1.0) as c:
                    return c.admin("version").startswith("OK")
            except OSError:
                return proc.poll() is not None  # stop waiting if it died

        # the first run makes .venv (minutes, compiling the hot path); CI has made it already
        wait_for(answers, timeout=800, pause=0.2, what="scripts/serve to answer")
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        argv = Path(f"/proc/{proc.pid}/cmdline").read_text().split("\0")
        assert str(REPO / ".venv/bin/shardgear") in argv
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
