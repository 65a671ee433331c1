"""Retry policies (shardgear/retries.py): the config table, backoff with cap and jitter."""

from __future__ import annotations

import random
import re
from pathlib import Path

import orjson
import pytest

from shardgear.config import Config, FunctionRule, FunctionSettings
from shardgear.config_file import ConfigError, build_config
from shardgear.function_settings import FunctionSettingsApplier
from shardgear.jobs import OUT_EXCEPTION, OUT_FAIL, OUT_LOST, OUT_TIMEOUT, Function
from shardgear.retries import RetryPolicy, duration, parse_policy


def test_an_empty_table_is_the_default_policy() -> None:
    p = parse_policy({})
    assert p == RetryPolicy()
    assert p.attempts == 3 and p.backoff == "exponential"
    assert p.on == OUT_FAIL | OUT_EXCEPTION | OUT_LOST | OUT_TIMEOUT
    assert p.dead_letter and not p.foreground


def test_every_key_parses() -> None:
    p = parse_policy(
        {
            "attempts": 5,
            "on": ["exception", "timeout"],
            "backoff": "fixed",
            "delay": "30s",
            "factor": 3,
            "max-delay": "2h",
            "jitter": 0.5,
            "foreground": True,
            "dead-letter": False,
            "dead-max-jobs": 10,
            "dead-max-age": "7d",
        }
    )
    assert p == RetryPolicy(
        attempts=5,
        on=OUT_EXCEPTION | OUT_TIMEOUT,
        backoff="fixed",
        delay=30.0,
        factor=3.0,
        max_delay=7200.0,
        jitter=0.5,
        foreground=True,
        dead_letter=False,
        dead_max_jobs=10,
        dead_max_age=7 * 86400.0,
    )


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"attempt": 3}, "unknown key 'attempt'"),
        ({"attempts": 0}, "attempts: must be from 1"),
        ({"attempts": "3"}, "attempts: expected an integer"),
        ({"attempts": True}, "attempts: expected an integer"),
        ({"on": ["fail", "crash"]}, "on: unknown failure 'crash'"),
        ({"on": []}, "on: expected a list"),
        ({"backoff": "linear"}, "backoff: must be exponential or fixed"),
        ({"delay": -1}, "delay: must be from 0 to"),
        ({"delay": "10 parsecs"}, "delay: expected seconds"),
        ({"jitter": 1.5}, "jitter: must be from 0 to 1"),
        ({"factor": 0.5}, "factor: must be from 1"),
        ({"delay": 60, "max-delay": 10}, "max-delay (10) is less than delay (60)"),
        ({"foreground": "yes"}, "foreground: expected true or false"),
    ],
)
def test_bad_tables_are_refused_with_the_key_and_the_reason(
    table: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        parse_policy(table)


def test_a_table_is_required() -> None:
    with pytest.raises(ValueError, match="expected a table"):
        parse_policy(5)


def test_a_long_delay_raises_an_unset_cap() -> None:
    assert parse_policy({"delay": "2h"}).max_delay == 7200.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("7d", 604800.0),
        (" 1.5 ", 1.5),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert duration(text) == seconds


@pytest.mark.parametrize("value", [1e308, float("nan"), -1, "367d", 366 * 86400 + 1])
def test_durations_out_of_range_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="must be from 0 to"):
        duration(value)


def test_a_delay_of_1e308_is_refused_with_its_key() -> None:
    with pytest.raises(ValueError, match=r"^delay: must be from 0 to"):
        parse_policy({"delay": 1e308})


def test_fixed_backoff_is_the_same_every_time() -> None:
    p = RetryPolicy(backoff="fixed", delay=5.0, jitter=0.0)
    rng = random.Random(1)
    assert [p.backoff_delay(k, rng) for k in range(1, 6)] == [5.0] * 5


def test_exponential_backoff_doubles_up_to_the_cap() -> None:
    p = RetryPolicy(delay=1.0, factor=2.0, max_delay=10.0, jitter=0.0)
    rng = random.Random(1)
    assert [p.backoff_delay(k, rng) for k in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_a_huge_failure_count_stays_at_the_cap() -> None:
    p = RetryPolicy(delay=1.0, factor=1000.0, max_delay=60.0, jitter=0.0)
    assert p.backoff_delay(100_000, random.Random(1)) == 60.0


def test_jitter_stays_within_its_band_and_under_the_cap() -> None:
    p = RetryPolicy(delay=10.0, factor=2.0, max_delay=35.0, jitter=0.25)
    rng = random.Random(7)
    for k in range(1, 5):
        base = min(10.0 * 2 ** (k - 1), 35.0)
        for _ in range(200):
            d = p.backoff_delay(k, rng)
            assert base * 0.75 <= d <= min(base * 1.25, 35.0)


def test_jitter_is_deterministic_for_a_seeded_rng() -> None:
    p = RetryPolicy(delay=10.0, jitter=0.5)
    a = [p.backoff_delay(k, random.Random(42)) for k in range(1, 4)]
    b = [p.backoff_delay(k, random.Random(42)) for k in range(1, 4)]
    assert a == b
    spread = {round(p.backoff_delay(1, random.Random(seed)), 6) for seed in range(20)}
    assert len(spread) > 10  # jitter really varies


RETRY_FILE = """\
[functions."resize_*".retry]
attempts = 2
on = ["fail", "timeout"]

[functions."resize_big"]
maxqueue = 10

[functions."resize_big".retry]
attempts = 9
backoff = "fixed"
delay = "1.5s"
jitter = 0
dead-max-jobs = 50
dead-max-age = "7d"

[functions."resize_?ig"]
retry = { attempts = 4, foreground = true }
"""


def test_retry_tables_of_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "shardgear.toml"
    path.write_text(RETRY_FILE)
    config = build_config(str(path), {})
    big = config.function_settings(b"resize_big")
    assert big.maxqueue == (10, 10, 10)
    assert big.retry == RetryPolicy(
        attempts=9,
        backoff="fixed",
        delay=1.5,
        jitter=0.0,
        dead_max_jobs=50,
        dead_max_age=7 * 86400.0,
    )
    # the exact name first, then the first glob in file order (its inline table too)
    assert config.function_settings(b"resize_pig").retry == RetryPolicy(
        attempts=2, on=OUT_FAIL | OUT_TIMEOUT
    )
    assert config.function_settings(b"thumb").retry is None
    # children get the config as JSON: the policies come back as they were
    again = Config.from_json_dict(orjson.loads(orjson.dumps(config.to_json_dict())))
    assert again == config
    assert again.function_settings(b"resize_big").retry == big.retry


@pytest.mark.parametrize(
    ("table", "reason"),
    [
        ("factor = 0", "factor: must be from 1"),
        ('delay = "soon"', "delay: expected seconds"),
        ('on = ["crash"]', "unknown failure 'crash'"),
        ("attemps = 3", "unknown key 'attemps'"),
    ],
)
def test_a_bad_retry_table_names_its_line(tmp_path: Path, table: str, reason: str) -> None:
    path = tmp_path / "shardgear.toml"
    path.write_text(f'port = 4730\n\n[functions."f".retry]\nattempts = 2\n{table}\n')
    where = re.escape(':5: functions."f".retry: ')
    with pytest.raises(ConfigError, match=where + ".*" + re.escape(reason)):
        build_config(str(path), {})


def test_a_reload_gives_and_takes_policies() -> None:
    policy = RetryPolicy(attempts=5)
    old = Config(functions=(FunctionRule("f*", FunctionSettings(retry=policy)),))
    applier = FunctionSettingsApplier(old)
    f, g = Function(b"f1", 0), Function(b"g", 0)
    applier.apply(f)
    applier.apply(g)
    assert f.retry == policy and g.retry is None
    new = Config(functions=(FunctionRule("g", FunctionSettings(retry=policy)),))
    assert applier.reload(new, [f, g]) == 2
    assert f.retry is None and g.retry == policy
