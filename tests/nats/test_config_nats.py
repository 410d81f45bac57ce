"""`[nats]` and `[daemon] roles` (SPEC §13): checked at the edge; the default is one process, no NATS."""

from __future__ import annotations

import pytest

from marketflow.config import ConfigError, parse_config
from marketflow.daemon import Daemon


def issues(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="m.toml", env={})
    return [str(issue) for issue in caught.value.issues]


async def test_defaults_are_one_process_without_nats() -> None:
    config = parse_config("", env={})
    assert config.daemon.roles == ("collect", "store", "serve") and config.nats.servers == ()
    daemon = Daemon(parse_config('[storage]\nurl = "sqlite:///:memory:"\n', env={}))
    assert not any(c.name.startswith("nats") for c in daemon.supervisor.statistics().children)
    assert daemon.view_bus is daemon.trade_bus


def test_a_cluster_configuration_is_read_exactly() -> None:
    config = parse_config(
        '[daemon]\nroles = ["serve", "collect"]\n[nats]\nservers = ["nats://10.0.0.1:4222", "tls://n2:4222"]\n'
        'subject_prefix = "prod.mf"\nstream_replicas = 3\nmax_age = "36h"\nack_wait_s = 5\n',
        env={},
    )
    assert config.daemon.roles == ("collect", "serve")  # one order, whatever the file's
    n = config.nats
    assert (n.servers, n.subject_prefix, n.stream_replicas, n.max_age_s, n.ack_wait_s) == (
        ("nats://10.0.0.1:4222", "tls://n2:4222"),
        "prod.mf",
        3,
        36 * 3600,
        5.0,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[daemon]\nroles = ["store"]\n',
            "m.toml:2: daemon.roles: a daemon without every role (collect, store, serve) needs NATS to reach "
            'the others: set [nats] servers, e.g. ["nats://127.0.0.1:4222"]',
        ),
        (
            '[daemon]\nroles = ["collect", "ingest"]\n',
            "m.toml:2: daemon.roles: must be a non-empty array of roles (collect, store, serve), "
            'e.g. ["collect"]; string "ingest" is not a role',
        ),
        (
            '[nats]\nservers = ["http://x:4222"]\n',
            'm.toml:2: nats.servers: must be an array of NATS URLs, e.g. ["nats://10.0.0.1:4222"] (empty: no '
            'NATS); string "http://x:4222" is not a nats:// or tls:// URL',
        ),
        (
            '[nats]\nsubject_prefix = "mf.>"\n',
            "m.toml:2: nats.subject_prefix: must be NATS subject tokens of letters, digits, _ and - "
            'joined by dots (no wildcards), e.g. "marketflow" or "prod.marketflow", got string "mf.>"',
        ),
        (
            "[nats]\nstream_replicas = 7\n",
            "m.toml:2: nats.stream_replicas: must be an integer from 1 to 5 (3 on a 3-node cluster), "
            "got integer 7",
        ),
        (
            '[nats]\nmax_age = "7 days"\n',
            'm.toml:2: nats.max_age: must be a number and a unit s|m|h|d, e.g. "1s", "15m", "1h", "1d", got '
            'string "7 days"',
        ),
        (
            "[nats]\nservers = []\nreplicas = 3\n",
            "m.toml:3: nats.replicas: unknown key, did you mean 'stream_replicas'?",
        ),
    ],
)
def test_bad_values_name_their_line_key_and_reason(text: str, expected: str) -> None:
    assert issues(text) == [expected]
