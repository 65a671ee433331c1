"""The config file: schema, errors with line numbers, flags over the file, per-function rules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shardgear.cli import NOT_SETTINGS, build_parser, parse_args, parse_config
from shardgear.config import Config, FunctionRule, FunctionSettings, resolve_function_settings
from shardgear.config_file import (
    SETTINGS,
    ConfigError,
    build_config,
    load_file,
    reload_changes,
)

EXAMPLE = """\
# comments are fine
listen = "127.0.0.1"
port = 5000
fronts = 3
max-packet-size = "64M"
ring-size = 131072
exceptions = true
graceful-timeout = 2.5
log-level = "INFO"

[functions."resize_*"]
maxqueue = 100

[functions."resize_big"]
maxqueue = [1, 2, 3]
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "shardgear.toml"
    path.write_text(text)
    return str(path)


def test_every_flag_has_a_key_and_every_key_a_flag() -> None:
    dests = {a.dest for a in build_parser()._actions} - NOT_SETTINGS
    assert dests == {s.field for s in SETTINGS}
    flags = {o[2:] for a in build_parser()._actions for o in a.option_strings if o[:2] == "--"}
    assert {s.key for s in SETTINGS} <= flags
    assert {s.field for s in SETTINGS} | {"functions", "config_file", "access"} == set(
        Config.__dataclass_fields__
    )


def test_a_file_sets_every_kind_of_value(tmp_path: Path) -> None:
    config = parse_config(["--config", write(tmp_path, EXAMPLE)])
    assert (config.listen, config.port, config.fronts) == ("127.0.0.1", 5000, 3)
    assert config.max_packet_size == 64 * 1024 * 1024 and config.ring_size == 131072
    assert config.exceptions is True and config.graceful_timeout == 2.5
    assert config.log_level == "info"
    assert config.config_file == str(tmp_path / "shardgear.toml")
    assert config.function_settings(b"resize_small").maxqueue == (100, 100, 100)
    assert config.function_settings(b"resize_big").maxqueue == (1, 2, 3)
    assert config.function_settings(b"other").maxqueue is None


def test_flags_override_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE)
    config = parse_config(["--config", path, "--port", "6000", "--no-exceptions"])
    assert config.port == 6000 and config.exceptions is False
    assert config.fronts == 3  # from the file
    defaults = parse_config([])
    assert defaults.port == 4730 and defaults.log_level == "notice"


def test_the_config_round_trips_through_json(tmp_path: Path) -> None:
    config = parse_config(["--config", write(tmp_path, EXAMPLE)])
    assert Config.from_json_dict(config.to_json_dict()) == config


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("port = 4730\nprot = 1\n", 2, "unknown key 'prot' (did you mean 'port'?)"),
        ("log-level = 'loud'\n", 1, "log-level: must be one of"),
        ("\n\nport = 70000\n", 3, "port: must be from 0 to 65535, got 70000"),
        ("fronts = 0\n", 1, "fronts: must be at least 1"),
        ("max_packet_size = 5\n", 1, "did you mean 'max-packet-size'?"),
        ("ring-size = '1K'\n", 1, "ring-size: must be at least 64K"),
        ("exceptions = 1\n", 1, "exceptions: expected true or false"),
        ("port = \n", 1, "Invalid value"),
        ('[functions."a"]\nmaxqueue = 1\n\n[functions."b"]\nmaxqeue = 2\n', 5, "maxqeue"),
        ('[functions."a"]\nmaxqueue = -1\n', 2, "maxqueue: must be from 0"),
        ('[functions."a"]\nmaxqueue = [1, 2]\n', 2, "expected N or [HIGH, NORMAL, LOW]"),
        ("[server]\nport = 1\n", 1, "unknown key 'server'"),
        ("functions = 3\n", 1, "expected tables"),
    ],
)
def test_a_bad_file_names_the_line_and_the_reason(
    tmp_path: Path, text: str, line: int, reason: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_file(path)
    assert str(info.value).startswith(f"{path}:{line}: ")
    assert reason in str(info.value)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        build_config(str(tmp_path / "nope.toml"), {})


def test_the_command_refuses_a_bad_file_in_one_line_with_status_2(tmp_path: Path) -> None:
    path = write(tmp_path, "port = 4730\nbacklog = 'many'\n")
    for extra in ([], ["--check-config"]):
        proc = subprocess.run(
            [sys.executable, "-m", "shardgear", "--config", path, *extra],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines() == [
            f"shardgear: error: {path}:2: backlog: expected an integer, got 'many'"
        ]


def test_check_config_accepts_a_good_file(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE)
    proc = subprocess.run(
        [sys.executable, "-m", "shardgear", "--config", path, "--check-config"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert "OK" in proc.stdout


def test_exact_names_win_then_the_first_matching_glob_per_setting() -> None:
    rules = (
        FunctionRule("a*", FunctionSettings(maxqueue=(1, 1, 1))),
        FunctionRule("ab*", FunctionSettings(maxqueue=(2, 2, 2))),
        FunctionRule("abc", FunctionSettings()),
        FunctionRule("x[0-9]", FunctionSettings(maxqueue=(3, 3, 3))),
    )
    assert resolve_function_settings(rules, b"abd").maxqueue == (1, 1, 1)
    # the exact table sets nothing, so the first glob's value holds
    assert resolve_function_settings(rules, b"abc").maxqueue == (1, 1, 1)
    assert resolve_function_settings(rules, b"x7").maxqueue == (3, 3, 3)
    assert resolve_function_settings(rules, b"x77").maxqueue is None
    assert resolve_function_settings(rules, b"\xff").maxqueue is None


def test_reload_splits_what_applies_from_what_needs_a_restart(tmp_path: Path) -> None:
    running = parse_config(["--config", write(tmp_path, EXAMPLE)])
    new = build_config(
        write(tmp_path, EXAMPLE.replace("port = 5000", "port = 5001").replace("INFO", "debug")),
        {},
    )
    applied, restart = reload_changes(running, new)
    assert restart == ["port"]
    assert applied.port == 5000 and applied.log_level == "debug"


def test_flags_only_records_the_given_flags() -> None:
    path, flags, check = parse_args(["--port", "1", "--log-level", "debug"])
    assert path is None and not check
    assert flags == {"port": 1, "log_level": "debug"}


ACCESS = """\
port = 5000
max-connections-per-peer = 100

[access]
admins = ["loopback", "ops-*"]

[access.functions."resize_*"]
submit = ["web-*", "10.0.0.0/8"]
work = ["worker-*"]
"""


def test_the_access_table_is_checked_and_reloads(tmp_path: Path) -> None:
    config = build_config(write(tmp_path, ACCESS), {})
    assert config.max_connections_per_peer == 100
    assert config.access == {
        "admins": ["loopback", "ops-*"],
        "functions": {"resize_*": {"submit": ["web-*", "10.0.0.0/8"], "work": ["worker-*"]}},
    }
    assert Config.from_json_dict(config.to_json_dict()) == config
    new = build_config(write(tmp_path, ACCESS.replace('"ops-*"', '"ops-1"')), {})
    running, restart = reload_changes(config, new)
    assert running.access["admins"] == ["loopback", "ops-1"] and restart == []


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('[access]\nadmins = ["10.0.0.0/99"]\n', ":2: access.admins: '10.0.0.0/99' is not"),
        ('[access]\n\n[access.functions."f"]\nread = ["x"]\n', ':4: access.functions."f".read:'),
        ("[access]\nbogus = 1\n", ":2: access.bogus: unknown key 'bogus'"),
    ],
)
def test_a_bad_access_table_names_the_line(tmp_path: Path, text: str, where: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_file(write(tmp_path, text))
    assert where in str(info.value)


def test_tls_settings_that_cannot_work_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tls-port needs tls-cert"):
        build_config(write(tmp_path, "tls-port = 4731\n"), {})
    with pytest.raises(ConfigError, match="cannot load tls-cert"):
        build_config(write(tmp_path, 'tls-cert = "/nonexistent.pem"\n'), {})


def test_http_needs_the_plain_listener_beside_tls(tmp_path: Path) -> None:
    # the HTTP process is a plain-text loopback client of the fronts
    with pytest.raises(ConfigError, match="http needs the plain-text listener"):
        build_config(write(tmp_path, 'http = "127.0.0.1:8080"\ntls-cert = "/x.pem"\n'), {})
