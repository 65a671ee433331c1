"""Access rules without a server (`shardgear.access`): identity patterns, which table governs a
function, the defaults, admin commands, and the checks of the config table."""

from __future__ import annotations

import pytest

from shardgear.access import (
    READ_ONLY,
    STATE_CHANGING,
    STATUS,
    SUBMIT,
    WORK,
    AccessPolicy,
    Identity,
    Matcher,
    parse_table,
)
from shardgear.tls import peer_names

WEB = Identity("10.1.2.3", ("web-1.example.com", "web-1"))
ANON = Identity("192.0.2.7")
LOCAL = Identity("127.0.0.1")
LOCAL6 = Identity("::1")


@pytest.mark.parametrize(
    ("patterns", "ident", "expected"),
    [
        (["*"], ANON, True),
        ([], ANON, False),
        (["loopback"], LOCAL, True),
        (["loopback"], LOCAL6, True),
        (["loopback"], ANON, False),
        (["10.0.0.0/8"], WEB, True),
        (["10.1.2.3"], WEB, True),
        (["10.1.2.4"], WEB, False),
        (["2001:db8::/32"], Identity("2001:db8::5"), True),
        (["2001:db8::/32"], WEB, False),
        (["web-1"], WEB, True),
        (["web-*.example.com"], WEB, True),
        (["WEB-1"], WEB, False),  # names are case-sensitive
        (["web-*"], ANON, False),  # no certificate, no names
        (["192.0.2.7"], Identity("-"), False),  # an unknown address matches no network
    ],
)
def test_identity_patterns(patterns: list[str], ident: Identity, expected: bool) -> None:
    assert Matcher(patterns).matches(ident) is expected


def test_no_rules_allow_everything_and_need_no_rights() -> None:
    policy = AccessPolicy({})
    assert not policy.restricts and policy.rights(ANON) is None
    for action in (SUBMIT, WORK, STATUS):
        assert policy.allows(ANON, action, b"anything")


def test_exact_table_first_then_the_first_matching_glob() -> None:
    policy = AccessPolicy(
        parse_table(
            {
                "functions": {
                    "resize_*": {"submit": ["web-*"], "work": ["10.0.0.0/8"]},
                    "*": {"submit": [], "work": [], "status": []},
                    "resize_big": {"submit": ["loopback"]},
                }
            }
        )
    )
    assert policy.allows(WEB, SUBMIT, b"resize_small")
    assert not policy.allows(ANON, SUBMIT, b"resize_small")
    assert policy.allows(ANON, STATUS, b"resize_small")  # not listed in its table: everyone
    assert policy.allows(WEB, WORK, b"resize_small")
    # the exact table governs alone: work is not listed there, so everyone may
    assert not policy.allows(WEB, SUBMIT, b"resize_big")
    assert policy.allows(LOCAL, SUBMIT, b"resize_big")
    assert policy.allows(ANON, WORK, b"resize_big")
    # the catch-all denies the rest
    assert not policy.allows(WEB, SUBMIT, b"other")
    assert not policy.allows(LOCAL, WORK, b"other")


def test_rights_cache_their_decisions() -> None:
    policy = AccessPolicy(parse_table({"functions": {"f": {"work": ["web-1"]}}}))
    rights = policy.rights(WEB)
    assert rights is not None
    assert rights.may_work(b"f") and rights.may_submit(b"f") and rights.may_work(b"g")
    assert rights.work == {b"f": True, b"g": True}
    other = policy.rights(ANON)
    assert other is not None and not other.may_work(b"f")


def test_admin_defaults_loopback_changes_everyone_reads() -> None:
    policy = AccessPolicy({})
    for command in STATE_CHANGING:
        assert policy.admin_allows(LOCAL, command) and policy.admin_allows(LOCAL6, command)
        assert not policy.admin_allows(WEB, command)
    for command in READ_ONLY:
        assert policy.admin_allows(ANON, command)
    assert not policy.admin_allows(WEB, "some later command")  # unknown: state-changing


def test_admin_rules_and_per_command_overrides() -> None:
    policy = AccessPolicy(
        parse_table(
            {
                "admins": ["ops-*"],
                "monitors": ["10.0.0.0/8", "ops-*"],
                "commands": {"Cancel  Job": ["scheduler"], "status": ["*"]},
            }
        )
    )
    ops = Identity("192.0.2.9", ("ops-1",))
    sched = Identity("192.0.2.10", ("scheduler",))
    assert policy.admin_allows(ops, "shutdown") and not policy.admin_allows(LOCAL, "shutdown")
    assert policy.admin_allows(sched, "cancel job") and not policy.admin_allows(ops, "cancel job")
    assert policy.admin_allows(WEB, "workers") and not policy.admin_allows(ANON, "workers")
    assert policy.admin_allows(ANON, "status")
    assert policy.admin_rule("shutdown") == "ops-*"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ([], "access: expected a table"),
        ({"admin": ["x"]}, "access.admin: unknown key 'admin'"),
        ({"admins": "ops"}, None),  # one string is a list of one
        ({"admins": [1]}, "access.admins: expected a list"),
        ({"admins": [" "]}, "access.admins: an empty identity"),
        ({"admins": ["10.0.0.0/33"]}, "'10.0.0.0/33' is not a network"),
        ({"commands": {"reboot": ["x"]}}, "unknown admin command 'reboot'"),
        ({"functions": {"f": {"read": ["x"]}}}, "unknown action 'read'"),
        ({"functions": {"f": ["x"]}}, 'access.functions."f": expected a table'),
        ({"functions": {"": {}}}, "an empty function name"),
    ],
)
def test_parse_table_errors_name_the_key(table: object, message: str | None) -> None:
    if message is None:
        assert parse_table(table)["admins"] == ["ops"]
        return
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(".", r"\.")):
        parse_table(table)


def test_peer_names_from_a_certificate() -> None:
    cert = {
        "subject": ((("countryName", "US"),), (("commonName", "worker-1"),)),
        "subjectAltName": (
            ("DNS", "worker-1.example.com"),
            ("DNS", "worker-1"),
            ("IP Address", "10.0.0.5"),
            ("URI", "spiffe://example.com/worker"),
            ("othername", "<unsupported>"),
        ),
    }
    assert peer_names(cert) == (
        "worker-1",
        "worker-1.example.com",
        "10.0.0.5",
        "spiffe://example.com/worker",
    )
    assert peer_names(None) == () and peer_names({}) == ()


def test_every_admin_command_has_a_rule_name() -> None:
    # the front looks each parsed command up (admin_commands.COMMAND_NAMES): one missing would be
    # a KeyError for every use of it
    from shardgear.admin_commands import COMMAND_NAMES
    from shardgear.proto.admin import AdminCommand

    assert set(COMMAND_NAMES) == set(AdminCommand)
    assert set(COMMAND_NAMES.values()) - {"unknown"} == READ_ONLY | STATE_CHANGING
