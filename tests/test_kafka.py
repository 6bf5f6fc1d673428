"""KafkaSource / KafkaSink / create_topics against the real broker, and security_config rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import CommitFailedError
from kafka.future import Future

from connectors.kafka import (
    CommitFailed,
    DeliveryFailed,
    KafkaSink,
    KafkaSource,
    create_topics,
    redact_security,
    security_config,
)
from connectors.embedded import EmbeddedKafka
from detector.protocol import Message, is_outage

MAX_POLLS = 60  # each poll waits at most POLL_MS: a bound on a stuck test, not a timing assertion
POLL_MS = 250


def produce(bootstrap: str, topic: str, n: int, start: int = 0) -> list[tuple[bytes, bytes]]:
    sink = KafkaSink(bootstrap)
    records = [(f"k{i}".encode(), f'{{"i": {i}}}'.encode()) for i in range(start, start + n)]
    for key, value in records:
        sink.send(topic, key, value)
    sink.close()
    return records


def consume(source: KafkaSource, n: int, batches: list[list[Message]] | None = None) -> list[Message]:
    """Poll until exactly ``n`` messages came back (never asking for more than that)."""
    got: list[Message] = []
    for _ in range(MAX_POLLS):
        if len(got) == n:
            break
        batch = source.poll(n - len(got), POLL_MS)
        if batches is not None and batch:
            batches.append(batch)
        got += batch
    assert len(got) == n, f"only {len(got)} of {n} messages arrived"
    return got


@pytest.fixture
def source_factory(kafka_bootstrap: str, fast_consumer_config: dict[str, int]) -> Any:
    opened: list[KafkaSource] = []

    def make(topic: str, group: str, **kwargs: Any) -> KafkaSource:
        src = KafkaSource([topic], group, kafka_bootstrap, **{**fast_consumer_config, **kwargs})
        opened.append(src)
        return src

    yield make
    for src in opened:
        src.close()


def test_sink_then_source_round_trip(
    kafka_bootstrap: str, topic_factory: Callable[..., str], source_factory: Any, unique_name: Any
) -> None:
    topic = topic_factory()
    sent = produce(kafka_bootstrap, topic, 7)
    assigned: list[list[tuple[str, int]]] = []
    source = source_factory(topic, unique_name("g"), on_assigned=assigned.append)
    got = consume(source, 7)
    assert [(m.key, m.value) for m in got] == sent
    assert [m.offset for m in got] == list(range(7))
    assert {(m.topic, m.partition) for m in got} == {(topic, 0)}
    assert all(m.timestamp_ms > 0 for m in got)
    assert source.assignment() == [(topic, 0)]
    assert assigned == [[(topic, 0)]]
    assert source.poll(10, 100) == []  # nothing more


def test_close_delivers_what_is_queued_and_a_second_close_does_nothing(
    kafka_bootstrap: str, topic_factory: Callable[..., str], source_factory: Any, unique_name: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topic = topic_factory()
    sink = KafkaSink(kafka_bootstrap, linger_ms=60_000)  # only a flush sends the record in time
    sink.send(topic, b"k", b"queued")
    sink.close()
    again: list[str] = []
    monkeypatch.setattr(sink._producer, "close", lambda **kw: again.append("producer"))
    sink.close()
    source = source_factory(topic, unique_name("g"))
    assert [(m.key, m.value) for m in consume(source, 1)] == [(b"k", b"queued")]
    source.close()
    monkeypatch.setattr(source._consumer, "close", lambda **kw: again.append("consumer"))
    source.close()  # the worker loop closes its source, and its owner may close it again
    assert again == [] and sink.closed and source.closed


@pytest.mark.parametrize("explicit, async_commit", [(False, False), (True, False), (True, True)])
def test_commit_then_same_group_resumes(
    kafka_bootstrap: str, topic_factory: Callable[..., str], source_factory: Any, unique_name: Any,
    explicit: bool, async_commit: bool,
) -> None:
    """Without offsets a commit covers every poll so far; with them only those offsets (the
    pipelined worker has polled batch N+1 when it commits batch N). An asynchronous commit has
    landed once ``close`` returns."""
    topic, group = topic_factory(), unique_name("g")
    sent = produce(kafka_bootstrap, topic, 10)
    first = source_factory(topic, group, async_commit=async_commit)
    batch = consume(first, 4)
    assert [m.offset for m in batch] == [0, 1, 2, 3]
    if explicit:
        consume(first, 3)  # the next batch, polled but not done
        first.commit({(topic, 0): batch[-1].offset + 1})
    else:
        first.commit()
        consume(first, 2)  # consumed but never committed: must come again
    first.close()

    second = source_factory(topic, group)
    rest = consume(second, 6)
    assert [(m.offset, m.key, m.value) for m in rest] == [(i, *sent[i]) for i in range(4, 10)]


def test_lag_is_produced_minus_consumed(
    kafka_bootstrap: str, topic_factory: Callable[..., str], source_factory: Any, unique_name: Any
) -> None:
    topic = topic_factory()
    produce(kafka_bootstrap, topic, 10)
    source = source_factory(topic, unique_name("g"))
    assert source.lag() is None  # nothing assigned or fetched yet
    consume(source, 4)
    assert source.lag() == 6
    consume(source, 5)
    assert source.lag() == 1
    consume(source, 1)
    assert source.lag() == 0


def test_two_partitions(
    kafka_bootstrap: str, topic_factory: Callable[..., str], source_factory: Any, unique_name: Any
) -> None:
    topic = topic_factory(partitions=2)
    sent = produce(kafka_bootstrap, topic, 30)
    source = source_factory(topic, unique_name("g"), max_poll_records=7)
    batches: list[list[Message]] = []
    got = consume(source, 30, batches)
    assert source.assignment() == [(topic, 0), (topic, 1)]
    assert sorted((m.key, m.value) for m in got) == sorted(sent)
    by_partition: dict[int, list[Message]] = {}
    for m in got:
        by_partition.setdefault(m.partition, []).append(m)
    assert set(by_partition) == {0, 1}  # 30 keys hash onto both partitions
    for msgs in by_partition.values():
        assert [m.offset for m in msgs] == list(range(len(msgs)))  # in order, none missing
        # keys are produced in increasing order, so per-partition order follows the keys
        assert [m.key for m in msgs] == [k for k, _ in sent if k in {x.key for x in msgs}]
    for batch in batches:
        parts = [m.partition for m in batch]
        assert parts == sorted(parts)  # flattened partition by partition
    assert source.lag() == 0


def test_create_topics_is_idempotent(kafka_bootstrap: str, unique_name: Any) -> None:
    name = unique_name("created")
    create_topics(kafka_bootstrap, [name], partitions=3)
    create_topics(kafka_bootstrap, [name], partitions=3)  # already exists: no error
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap)
    try:
        assert consumer.partitions_for_topic(name) == {0, 1, 2}
    finally:
        consumer.close(autocommit=False)


def test_sink_reports_records_it_cannot_send(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    sink = KafkaSink(kafka_bootstrap, max_request_size=1024)
    topic = topic_factory()
    with pytest.raises(DeliveryFailed, match="cannot queue") as info:
        sink.send(topic, b"k", b"x" * 4096)
    assert not is_outage(info.value)  # a record the producer refuses: not worth waiting for
    sink.send(topic, b"k", b"small")
    sink.flush()  # the earlier refusal does not poison later flushes
    sink.close()


@pytest.mark.integration
def test_flush_with_nothing_queued_skips_the_producer(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    """A batch without alerts or dead letters flushes nothing: no wait on the producer's IO."""
    sink = KafkaSink(kafka_bootstrap)
    calls = []
    real = sink._producer.flush
    sink._producer.flush = lambda timeout=None: calls.append(timeout) or real(timeout=timeout)
    sink.flush()
    assert calls == []
    sink.send(topic_factory(), b"k", b"v")
    sink.flush()
    assert len(calls) == 1
    sink.close()


@pytest.mark.integration
def test_flush_raises_when_the_broker_is_gone() -> None:
    with EmbeddedKafka() as broker:  # private: this test kills it
        topic = "outage"
        create_topics(broker.bootstrap, [topic])
        sink = KafkaSink(
            broker.bootstrap, flush_timeout_s=10, request_timeout_ms=500, delivery_timeout_ms=1000,
            max_block_ms=500, retry_backoff_ms=50,
        )
        sink.send(topic, b"k", b"before")
        sink.flush()
        broker.stop(timeout_s=0.5)  # it would wait for the sink to hang up
        sink.send(topic, b"k", b"during")
        with pytest.raises(DeliveryFailed, match="1 of 1 records not delivered") as info:
            sink.flush()
        assert is_outage(info.value)  # the broker is gone: the worker waits it out
        sink.close()  # the failure was reported once; nothing is left pending


def test_commit_failure_becomes_commit_failed(
    topic_factory: Callable[..., str],
    source_factory: Any,
    unique_name: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = source_factory(topic_factory(), unique_name("g"))

    def rebalanced(*args: object, **kwargs: object) -> None:
        raise CommitFailedError("group rebalanced")

    monkeypatch.setattr(source._consumer, "commit", rebalanced)
    with pytest.raises(CommitFailed) as info:
        source.commit()
    assert isinstance(info.value.__cause__, CommitFailedError)


@pytest.mark.integration
def test_async_commits_land_in_order_and_a_failure_is_reported_by_the_next(
    kafka_bootstrap: str, topic_factory: Callable[..., str], source_factory: Any,
    unique_name: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    topic, group = topic_factory(), unique_name("g")
    produce(kafka_bootstrap, topic, 10)
    source = source_factory(topic, group, async_commit=True)
    consume(source, 10)
    source.commit({(topic, 0): 3})
    source.commit({(topic, 0): 6})  # waits for the first, sends the second
    source.settle()
    tp = TopicPartition(topic, 0)
    assert source._consumer.committed(tp) == 6

    real = source._consumer.commit_async

    def refused(offsets: Any) -> Any:
        future = real(offsets)
        failed = Future()
        future.add_both(lambda _: failed.failure(CommitFailedError("group rebalanced")))
        return failed

    monkeypatch.setattr(source._consumer, "commit_async", refused)
    source.commit({(topic, 0): 8})  # sent; its failure is known only later
    monkeypatch.setattr(source._consumer, "commit_async", real)
    with pytest.raises(CommitFailed, match="a later one is on its way.*group rebalanced"):
        source.commit({(topic, 0): 9})  # the later commit still goes out
    source.settle()
    assert source._consumer.committed(tp) == 9
    source.commit({(topic, 0): 10})
    source.commit()  # a synchronous commit settles the one in flight first, and covers it
    assert source._consumer.committed(tp) == 10


# ---- security_config (no broker needed) ----


def test_security_plaintext_default() -> None:
    assert security_config() == {"security_protocol": "PLAINTEXT"}


def test_security_sasl_variants(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here")
    for mech in ("PLAIN", "SCRAM-SHA-256", "scram-sha-512"):
        cfg = security_config("sasl_ssl", mech, "alice", "pw", ssl_cafile=str(ca))
        assert cfg == {
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": mech.upper(),
            "sasl_plain_username": "alice",
            "sasl_plain_password": "pw",
            "ssl_cafile": str(ca),
            "ssl_check_hostname": True,
        }
        assert redact_security(cfg)["sasl_plain_password"] == "***"
    plain = security_config("SASL_PLAINTEXT", "SCRAM-SHA-256", "bob", "pw")
    assert plain["security_protocol"] == "SASL_PLAINTEXT" and "ssl_check_hostname" not in plain


def test_security_ssl_with_client_cert(tmp_path: Path) -> None:
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("x")
    cfg = security_config(
        "SSL",
        ssl_cafile=str(tmp_path / "ca.pem"),
        ssl_certfile=str(tmp_path / "cert.pem"),
        ssl_keyfile=str(tmp_path / "key.pem"),
        ssl_check_hostname=False,
    )
    assert cfg["security_protocol"] == "SSL" and cfg["ssl_check_hostname"] is False
    assert cfg["ssl_certfile"].endswith("cert.pem") and cfg["ssl_keyfile"].endswith("key.pem")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"protocol": "TLS"}, "security protocol must be one of"),
        ({"protocol": "SASL_SSL", "username": "u", "password": "p"}, "needs a SASL mechanism"),
        (
            {"protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI", "username": "u", "password": "p"},
            "mechanism must be",
        ),
        ({"protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "password": "p"}, "needs a username"),
        ({"protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-512", "username": "u"}, "mechanism must be"),
        (
            {"protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "username": "u"},
            "needs a password",
        ),
        ({"protocol": "SSL", "username": "u"}, "need SASL_PLAINTEXT or SASL_SSL"),
        ({"protocol": "PLAINTEXT", "sasl_mechanism": "PLAIN"}, "need SASL_PLAINTEXT or SASL_SSL"),
        ({"protocol": "PLAINTEXT", "ssl_cafile": "/etc/ca.pem"}, "TLS files need SSL or SASL_SSL"),
        ({"protocol": "SSL", "ssl_cafile": "/no/such/ca.pem"}, "not a readable file"),
        ({"protocol": "SSL", "ssl_keyfile": "/no/such/key.pem"}, "needs ssl_certfile"),
    ],
)
def test_security_rejects_bad_combinations(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        security_config(**kwargs)
