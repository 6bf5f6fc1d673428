"""``Source`` and ``Sink`` on Kafka (kafka-python), plus topic creation and security settings.

Offsets are committed only by ``KafkaSource.commit``, which the worker calls after every sink has
flushed: delivery is at-least-once. Errors the worker must react to come out as ``CommitFailed`` and
``DeliveryFailed`` rather than as kafka-python's many exception types.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError, for_code

from detector.protocol import Message, Unavailable

log = logging.getLogger(__name__)

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
Partitions = list[tuple[str, int]]


class KafkaConnectorError(Exception):
    """Base of the errors the worker handles from this module."""


class CommitFailed(KafkaConnectorError):
    """Offsets were not committed (group rebalanced, coordinator gone...): records will come again."""


class DeliveryFailed(KafkaConnectorError):
    """At least one record since the last flush was not acknowledged by the broker."""


class DeliveryUnavailable(DeliveryFailed, Unavailable):
    """Delivery failed for a passing reason (no broker, a timeout, a leader moving): an outage,
    which the worker waits out, unlike a record the broker refuses (too large, say)."""


def _delivery_error(message: str, cause: BaseException | None) -> DeliveryFailed:
    passing = cause is None or isinstance(cause, KafkaTimeoutError) or getattr(
        cause, "retriable", False)
    return (DeliveryUnavailable if passing else DeliveryFailed)(message)


def security_config(
    protocol: str = "PLAINTEXT",
    sasl_mechanism: str | None = None,
    username: str | None = None,
    password: str | None = None,
    ssl_cafile: str | None = None,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    ssl_check_hostname: bool = True,
) -> dict[str, Any]:
    """kafka-python keyword arguments for one security setup.

    Raises ValueError for combinations that cannot work, before any connection is tried.
    """
    protocol = protocol.upper()
    if protocol not in PROTOCOLS:
        raise ValueError(f"security protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    sasl = protocol.startswith("SASL_")
    tls = protocol.endswith("SSL")
    out: dict[str, Any] = {"security_protocol": protocol}
    if sasl:
        if not sasl_mechanism:
            raise ValueError(f"{protocol} needs a SASL mechanism ({', '.join(SASL_MECHANISMS)})")
        mechanism = sasl_mechanism.upper()
        if mechanism not in SASL_MECHANISMS:
            raise ValueError(
                f"SASL mechanism must be one of {', '.join(SASL_MECHANISMS)}, got {sasl_mechanism!r}"
            )
        if not username:
            raise ValueError(f"SASL {mechanism} needs a username")
        if not password:
            raise ValueError(f"SASL {mechanism} needs a password")
        if mechanism == "PLAIN" and not tls:
            log.warning("SASL_PLAINTEXT with PLAIN sends the password unencrypted; prefer SASL_SSL")
        out.update(sasl_mechanism=mechanism, sasl_plain_username=username, sasl_plain_password=password)
    elif sasl_mechanism or username or password:
        raise ValueError(
            f"SASL mechanism, username and password need SASL_PLAINTEXT or SASL_SSL, not {protocol}"
        )
    ssl_files = {"ssl_cafile": ssl_cafile, "ssl_certfile": ssl_certfile, "ssl_keyfile": ssl_keyfile}
    if tls:
        if ssl_keyfile and not ssl_certfile:
            raise ValueError("ssl_keyfile needs ssl_certfile (the client certificate it belongs to)")
        for name, path in ssl_files.items():
            if path is not None:
                if not Path(path).is_file():
                    raise ValueError(f"{name} is not a readable file: {path}")
                out[name] = str(path)
        out["ssl_check_hostname"] = ssl_check_hostname
    elif any(ssl_files.values()):
        raise ValueError(f"TLS files need SSL or SASL_SSL, not {protocol}")
    return out


def redact_security(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` fit for logs: the SASL password masked."""
    return {k: ("***" if k == "sasl_plain_password" and v else v) for k, v in config.items()}


class KafkaSource:
    """Consumes ``topics`` as a member of ``group_id``; offsets committed only by ``commit``."""

    def __init__(
        self,
        topics: Sequence[str],
        group_id: str,
        bootstrap_servers: str | Sequence[str],
        security: dict[str, Any] | None = None,
        max_poll_records: int = 500,
        session_timeout_ms: int = 10000,
        heartbeat_interval_ms: int = 3000,
        fetch_max_wait_ms: int = 500,
        auto_offset_reset: str = "earliest",
        on_revoked: Callable[[Partitions], None] | None = None,
        on_assigned: Callable[[Partitions], None] | None = None,
        async_commit: bool = False,
        commit_timeout_s: float = 30.0,
        **extra: Any,
    ) -> None:
        """``on_revoked`` runs inside ``poll`` before partitions go (flush and commit there).
        ``async_commit``: see ``commit``."""
        if not topics:
            raise ValueError("KafkaSource needs at least one topic")
        self.topics = list(topics)
        self.group_id = group_id
        self.closed = False
        self.async_commit, self.commit_timeout_s = async_commit, commit_timeout_s
        self._inflight: tuple[Any, threading.Event] | None = None
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            group_id=group_id,
            enable_auto_commit=False,
            max_poll_records=max_poll_records,
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=heartbeat_interval_ms,
            fetch_max_wait_ms=fetch_max_wait_ms,
            auto_offset_reset=auto_offset_reset,
            **(security or {}),
            **extra,
        )
        self._consumer.subscribe(self.topics, listener=_Listener(on_revoked, on_assigned))

    def poll(self, max_records: int, timeout_ms: int) -> list[Message]:
        """Up to ``max_records`` messages, partition by partition in (topic, partition) order."""
        batches = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        out = []
        for tp in sorted(batches):
            for r in batches[tp]:
                out.append(Message(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp))
        return out

    def commit(self, offsets: Mapping[tuple[str, int], int] | None = None) -> None:
        """Commit ``offsets``, or else the position after all ``poll`` returned; raise
        ``CommitFailed``.

        Synchronous, except explicit ``offsets`` with ``async_commit``: those are sent without
        waiting for the broker's answer, and the next commit (or ``close``) first waits for it, so
        at most one commit is ever in flight and commits land in order. A crash then replays at
        most the batch whose commit was in flight, as a crash between flush and a synchronous
        commit would. A failed asynchronous commit is raised by the next call (whose offsets,
        later ones, cover it) so that it is counted.
        """
        previous = self._settle()
        explicit = None if offsets is None else {
            TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()}
        try:
            if explicit is not None and self.async_commit:
                done = threading.Event()
                future = self._consumer.commit_async(explicit)
                future.add_both(lambda _: done.set())
                self._inflight = (future, done)
            else:
                self._consumer.commit(explicit)
                previous = None  # this commit covers the earlier one
        except KafkaError as exc:
            raise CommitFailed(f"offset commit for group {self.group_id!r} failed: {exc}") from exc
        if previous is not None:
            raise CommitFailed(f"offset commit for group {self.group_id!r} failed (a later one "
                               f"is on its way): {previous}")

    def seek(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """Fetch each (topic, partition) from ``offsets`` again on the next ``poll``."""
        for (topic, partition), offset in offsets.items():
            self._consumer.seek(TopicPartition(topic, partition), offset)

    def settle(self) -> None:
        """Wait for the commit in flight (``async_commit``); raise ``CommitFailed`` if it failed."""
        failed = self._settle()
        if failed is not None:
            raise CommitFailed(f"offset commit for group {self.group_id!r} failed: {failed}")

    def _settle(self) -> str | None:
        """Wait for the commit in flight, if any; why it failed, or None."""
        inflight, self._inflight = self._inflight, None
        if inflight is None:
            return None
        future, done = inflight
        if not done.wait(self.commit_timeout_s):
            return f"no answer within {self.commit_timeout_s:g} s"
        return f"{future.exception}" if future.failed() else None

    def lag(self) -> int | None:
        """Records behind the highwater over all assigned partitions; None until every one is known."""
        parts = self._consumer.assignment()
        if not parts:
            return None
        total = 0
        for tp in parts:
            high = self._consumer.highwater(tp)  # from fetch responses; end_offsets() is not trusted
            if high is None:
                return None
            try:
                pos = self._consumer.position(tp, timeout_ms=0)
            except KafkaError:
                return None
            if pos is None:
                return None
            total += max(0, high - pos)
        return total

    def reachable(self) -> bool:
        """False while the consumer knows no group coordinator: the broker cannot be reached, or
        the coordinator is being found again (kafka-python marks it dead when a heartbeat or a
        request to it fails). Only reads an attribute, so it is safe from any thread."""
        coordinator = getattr(self._consumer, "_coordinator", None)
        return getattr(coordinator, "coordinator_id", "unknown") is not None

    def assignment(self) -> Partitions:
        """The (topic, partition) pairs this member owns right now, sorted."""
        return sorted((tp.topic, tp.partition) for tp in self._consumer.assignment())

    def close(self) -> None:
        """Leave the group (partitions move at once, no session timeout) without committing.

        Idempotent: the worker loop closes its source on stop, and its owner may close it again.
        """
        if self.closed:
            return
        self.closed = True
        failed = self._settle()  # let the last commit land before leaving the group
        if failed is not None:
            log.warning("the last offset commit failed (the next owner replays it): %s", failed)
        self._consumer.close(autocommit=False)


class _Listener(ConsumerRebalanceListener):
    def __init__(
        self,
        on_revoked: Callable[[Partitions], None] | None,
        on_assigned: Callable[[Partitions], None] | None,
    ) -> None:
        self._revoked, self._assigned = on_revoked, on_assigned

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        log.info("partitions revoked: %s", sorted(revoked))
        if self._revoked:
            self._revoked(sorted((tp.topic, tp.partition) for tp in revoked))

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        log.info("partitions assigned: %s", sorted(assigned))
        if self._assigned:
            self._assigned(sorted((tp.topic, tp.partition) for tp in assigned))


class KafkaSink:
    """Produces records; ``flush`` raises ``DeliveryFailed`` if any record since the last one failed."""

    def __init__(
        self,
        bootstrap_servers: str | Sequence[str],
        security: dict[str, Any] | None = None,
        linger_ms: int = 5,
        acks: int | str = "all",
        compression_type: str | None = None,
        flush_timeout_s: float = 30.0,
        **extra: Any,
    ) -> None:
        self.flush_timeout_s = flush_timeout_s
        self.closed = False
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap_servers,
            linger_ms=linger_ms,
            acks=acks,
            compression_type=compression_type,
            **(security or {}),
            **extra,
        )
        self._futures: list[Any] = []

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Queue one record; raises ``DeliveryFailed`` if it cannot even be queued."""
        try:
            self._futures.append(self._producer.send(topic, key=key, value=value))
        except KafkaError as exc:
            raise _delivery_error(f"cannot queue a record for {topic!r}: {exc}", exc) from exc

    def flush(self) -> None:
        """Wait for every queued record; raise ``DeliveryFailed`` if any was not acknowledged."""
        futures, self._futures = self._futures, []
        if not futures:  # nothing queued since the last flush: no round trip to the IO thread
            return
        try:
            self._producer.flush(timeout=self.flush_timeout_s)
        except KafkaError as exc:
            raise _delivery_error(f"flush of {len(futures)} records did not complete: {exc}",
                                  exc) from exc
        failed = [f for f in futures if not f.is_done or f.failed()]
        if failed:
            first = failed[0].exception if failed[0].is_done else "not completed"
            refused = next((f.exception for f in failed if f.is_done and not isinstance(
                f.exception, KafkaTimeoutError) and not getattr(f.exception, "retriable", False)),
                None)  # one record the broker refuses makes it not an outage
            raise _delivery_error(
                f"{len(failed)} of {len(futures)} records not delivered; first: {first}", refused)

    def close(self) -> None:
        """Flush (raising ``DeliveryFailed`` on failures), then release the producer. Idempotent."""
        if self.closed:
            return
        self.closed = True
        try:
            self.flush()
        finally:
            self._producer.close(timeout=self.flush_timeout_s)


def create_topics(
    bootstrap_servers: str | Sequence[str],
    names: Sequence[str],
    partitions: int = 1,
    replication_factor: int = 1,
    security: dict[str, Any] | None = None,
    timeout_ms: int = 15000,
) -> None:
    """Create topics, leaving existing ones alone; wait until their metadata is visible."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers, **(security or {}))
    try:
        one = {"num_partitions": partitions, "replication_factor": replication_factor}
        spec = {name: dict(one) for name in names}
        result = admin.create_topics(spec, timeout_ms=timeout_ms, raise_errors=False)
        for topic in result["topics"]:
            error = for_code(topic["error_code"])
            if topic["error_code"] and error is not TopicAlreadyExistsError:
                raise error(f"cannot create topic {topic['name']!r}: {topic.get('error_message')}")
        admin.wait_for_topics(list(names), timeout_ms=timeout_ms)
    finally:
        admin.close()
