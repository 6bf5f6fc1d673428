"""``ganwatch replay`` takes ``serve``'s Kafka security flags and variables, checked by the same
``Settings`` rules and turned into the same client config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ganwatch import replay
from ganwatch.cli import main
from ganwatch.security import kafka_security
from ganwatch.settings import Settings

SAMPLE = Path(__file__).resolve().parents[1] / "deploy" / "sample" / "pump-1.csv"
BASE = ["replay", "--data", str(SAMPLE), "--bootstrap-servers", "broker:9093",
        "--topic", "ganwatch.readings", "--entity", "pump-1", "--timestamp-column", "ts",
        "--exclude-columns", "anomaly", "--limit", "3"]


@pytest.fixture
def sent(monkeypatch) -> dict:
    """What ``publish`` was asked to do, instead of connecting."""
    seen: dict = {}

    def fake(table, entity, bootstrap, topic, **kw):
        seen.update(kw, bootstrap=bootstrap, topic=topic)
        return kw["limit"]

    monkeypatch.setattr(replay, "publish", fake)
    for name in list(os.environ):
        if name.startswith("GANWATCH_"):
            monkeypatch.delenv(name)
    return seen


def test_security_flags_become_serves_client_config(sent, tmp_path, capsys):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    args = ["--security-protocol", "sasl_ssl", "--sasl-mechanism", "SCRAM-SHA-512",
            "--sasl-username", "alice", "--ssl-cafile", str(ca)]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GANWATCH_SASL_PASSWORD", "s3cret")  # secrets from the environment, as serve
        assert main(BASE + args) == 0
    settings = Settings(model="-", bootstrap_servers="broker:9093", input_topics=["x"],
                        alerts_topic="a", dead_letter_topic="d", redis_url="redis://r",
                        security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                        sasl_username="alice", sasl_password="s3cret", ssl_cafile=str(ca))
    assert sent["security"] == kafka_security(settings)
    assert sent["security"]["sasl_plain_password"] == "s3cret"
    assert '"published": 3' in capsys.readouterr().out


def test_plaintext_by_default(sent):
    assert main(BASE) == 0
    assert sent["security"] == {"security_protocol": "PLAINTEXT"}


@pytest.mark.parametrize("extra, names", [
    (["--security-protocol", "SASL_SSL"], "--sasl-mechanism (GANWATCH_SASL_MECHANISM)"),
    (["--sasl-username", "bob"], "--security-protocol PLAINTEXT does not use SASL"),
    (["--security-protocol", "TLS"], "--security-protocol (GANWATCH_SECURITY_PROTOCOL)"),
    (["--ssl-cafile", "/nowhere/ca.pem"], "file not found"),
])
def test_bad_security_is_one_line_naming_the_flag(sent, capsys, extra, names):
    assert main(BASE + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ganwatch replay: error: ") and names in err[0]
    assert not sent  # refused before connecting
