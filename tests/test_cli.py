"""The command line: flags become a Config; bad flags give one line and status 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shardgear import __version__
from shardgear.cli import parse_config
from shardgear.config import MIB


def test_defaults_match_gearmand() -> None:
    config = parse_config([])
    assert config.port == 4730
    assert config.listen == ""
    assert config.job_retries == 0
    assert config.exceptions is False
    assert config.job_handle_prefix.startswith("H:")
    assert config.fronts >= 1 and config.shards >= 1


def test_flags_are_parsed() -> None:
    config = parse_config(
        [
            "--listen",
            "127.0.0.1",
            "--port",
            "5000",
            "--fronts",
            "3",
            "--shards",
            "4",
            "--job-retries",
            "2",
            "--exceptions",
            "--job-handle-prefix",
            "X:y",
            "--max-packet-size",
            "64M",
            "--log-level",
            "DEBUG",
        ]
    )
    assert (config.listen, config.port, config.fronts, config.shards) == ("127.0.0.1", 5000, 3, 4)
    assert config.job_retries == 2 and config.exceptions
    assert config.job_handle_prefix == "X:y"
    assert config.max_packet_size == 64 * MIB
    assert config.log_level == "debug"
    assert config.output_limit == 256 * MIB  # no longer follows the packet size (issue 7)
    assert config.total_input_limit == 128 * MIB


def test_defaults_accept_what_gearmand_accepts() -> None:
    """gearmand takes a packet of any size its u32 header can say; the caps that must admit one
    such packet do, without letting a slow reader's backlog grow to 4 GiB (issue 7)."""
    config = parse_config([])
    assert config.max_packet_size == 0xFFFFFFFF
    assert config.output_limit == 256 * MIB  # the packet in transit is not counted
    assert config.total_output_limit == 512 * MIB
    assert config.total_input_limit == 4 * 1024 * MIB  # twice the packet size, at most 4 GiB
    assert parse_config(["--max-packet-size", "3G"]).total_input_limit == 4 * 1024 * MIB
    assert parse_config(["--max-total-input", "1M"]).total_input_limit == MIB


@pytest.mark.parametrize(
    "argv",
    [
        ["--fronts", "0"],
        ["--shards", "x"],
        ["--port", "70000"],
        ["--bogus"],
        ["--max-packet-size", "lots"],
        ["--max-packet-size", "4294967296"],  # past the u32 size field of a packet
        ["--log-level", "loud"],
        ["--job-retries", "-1"],
    ],
)
def test_bad_flags_give_one_line_and_status_2(argv: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "shardgear", *argv], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shardgear: error:")


def test_version_and_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "shardgear", "--version"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0 and __version__ in out.stdout
    helptext = subprocess.run(
        [sys.executable, "-m", "shardgear", "--help"], capture_output=True, text=True, timeout=30
    ).stdout
    for flag in (
        "--listen",
        "--port",
        "--fronts",
        "--shards",
        "--job-retries",
        "--exceptions",
        "--job-handle-prefix",
        "--max-packet-size",
        "--log-level",
        "--version",
    ):
        assert flag in helptext
