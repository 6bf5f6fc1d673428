"""``StateStore`` on Redis: one hash per entity, written with a compare-and-set Lua script.

Key layout: ``{prefix}:{namespace}:{{{entity}}}`` (e.g. ``ganwatch:pumps-v2:{pump-7}``). The entity
sits inside braces, a Redis Cluster hash tag, so any keys added for an entity later land in the same
slot as its state. ``namespace`` separates models with different channels that share a Redis.

Fields: ``version``, ``last_ts_ms`` (empty when unset), ``count``, ``ts`` (int64 little-endian bytes),
``values`` (float64 little-endian, row-major ``(len(ts), n_channels)``) and ``episode`` (JSON).
Both ``load`` and ``save`` are a single pipelined round trip whatever the number of entities; on a
Redis Cluster (``redis+cluster://``, ``connectors/redis_cluster.py``) one per master, all written
before any is read. Every command names one key, so each goes to the master of its slot; nothing
the store does (no MULTI, SCAN or multi-key command) needs keys to share a slot.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import json
import logging
import ssl
from typing import Any, Iterator, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit

import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError, RedisClusterException, RedisError
from redis.retry import Retry

from connectors.redis_cluster import (
    CLUSTER_SCHEMES, cluster_client_from_url, is_unreachable, validate_cluster_url,
)
from detector.protocol import Unavailable
from detector.stream import EntityState

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 7 * 24 * 3600
URL_SCHEMES = ("redis", "rediss", "unix", *CLUSTER_SCHEMES)
RedisClient = redis.Redis | RedisCluster
_TS = np.dtype("<i8")
_VALUES = np.dtype("<f8")
_CAS_LUA = importlib.resources.files("connectors").joinpath("state_cas.lua").read_text("utf-8")


class StoreUnavailable(Unavailable):
    """Redis could not be reached or did not answer in time (the worker waits it out)."""


class StateDecodeError(ValueError):
    """A stored state does not match this store (other ``n_channels``, or foreign data)."""


class RedisStateStore:
    """Per-entity ``EntityState`` in Redis hashes, compare-and-set on ``version``."""

    def __init__(
        self,
        client: RedisClient,
        n_channels: int,
        prefix: str = "ganwatch",
        namespace: str = "",
        ttl_s: int | None = DEFAULT_TTL_S,
    ) -> None:
        if n_channels < 1:
            raise ValueError(f"n_channels must be at least 1, got {n_channels}")
        for name, text in (("prefix", prefix), ("namespace", namespace)):
            # A brace here would move the hash tag off the entity.
            if "{" in text or "}" in text:
                raise ValueError(f"{name} must not contain braces: {text!r}")
        if ttl_s is not None and ttl_s < 1:
            raise ValueError(f"ttl_s must be a positive number of seconds or None, got {ttl_s}")
        if client.get_encoder().decode_responses:
            raise ValueError("RedisStateStore needs decode_responses=False: its fields are binary")
        self.client = client
        self.n_channels = n_channels
        self.prefix = prefix
        self.namespace = namespace
        self.ttl_s = ttl_s
        # register_script gives the SHA and the source to reload after NOSCRIPT (Redis restart,
        # SCRIPT FLUSH, failover; on a cluster SCRIPT LOAD goes to every master); save() sends
        # EVALSHA itself to stay one round trip.
        self._cas = client.register_script(_CAS_LUA)

    def key(self, entity: str) -> str:
        """The Redis key of one entity's state."""
        return f"{self.prefix}:{self.namespace}:{{{entity}}}"

    def load(self, entities: Sequence[str]) -> dict[str, EntityState]:
        """Return every entity's state (fresh for unknown ones) in one pipelined round trip."""
        unique = list(dict.fromkeys(entities))
        if not unique:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for entity in unique:
            pipe.hgetall(self.key(entity))
        with _outage():
            rows = pipe.execute()
        return {entity: self._decode(entity, row) for entity, row in zip(unique, rows)}

    def save(self, states: Sequence[EntityState]) -> list[bool]:
        """Compare-and-set every state in one pipelined round trip; False where the version moved on."""
        if not states:
            return []
        calls = [self._cas_args(state) for state in states]
        results: list[Any] = self._evalsha(calls)
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:
            # The server lost its script cache; NOSCRIPT means nothing ran, so resending is safe.
            log.info("state CAS script not cached on the server; loading it")
            with _outage():
                self._cas.sha = self.client.script_load(self._cas.script)
            for i, r in zip(missing, self._evalsha([calls[i] for i in missing])):
                results[i] = r
        done, error = [], None
        for state, r in zip(states, results):
            ok = not isinstance(r, Exception) and int(r) == 1
            if ok:
                state.version += 1  # even when another state failed: this one is stored
            elif isinstance(r, Exception) and (error is None or is_unreachable(r)):
                error = r  # an outage of one master outweighs an error about one key
            done.append(ok)
        if error is not None:
            if is_unreachable(error):  # a cluster pipeline hands back one master's failure
                raise StoreUnavailable(f"{type(error).__name__}: {error}") from error
            raise error
        return done

    def ping(self) -> bool:
        """True when Redis answers PING."""
        try:
            if isinstance(self.client, RedisCluster):  # its plain ping() asks one node
                return bool(self.client.ping(target_nodes=RedisCluster.PRIMARIES))
            return bool(self.client.ping())
        except (RedisError, RedisClusterException) as exc:
            log.debug("redis ping failed: %s", exc)
            return False

    def _evalsha(self, calls: list[tuple[str, list[Any]]]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        cluster = isinstance(self.client, RedisCluster)
        for key, args in calls:
            # execute_command: a cluster pipeline blocks its evalsha() method. It would also ask
            # a node for the keys of each EVALSHA (COMMAND GETKEYS, a round trip each): the
            # master of the key's slot is named instead (a MOVED reply is still followed).
            where = {"target_nodes": self.client.get_node_from_key(key)} if cluster else {}
            pipe.execute_command("EVALSHA", self._cas.sha, 1, key, *args, **where)
        with _outage():
            return pipe.execute(raise_on_error=False)

    def _cas_args(self, state: EntityState) -> tuple[str, list[Any]]:
        ts = np.ascontiguousarray(state.ts, dtype=_TS)
        values = np.ascontiguousarray(state.values, dtype=_VALUES)
        if values.shape != (len(ts), self.n_channels):
            raise ValueError(
                f"state of {state.entity!r}: values shape {values.shape}, "
                f"expected ({len(ts)}, {self.n_channels})"
            )
        args: list[Any] = [
            int(state.version),
            self.ttl_s or 0,
            "last_ts_ms",
            "" if state.last_ts_ms is None else int(state.last_ts_ms),
            "count",
            int(state.count),
            "ts",
            ts.tobytes(),
            "values",
            values.tobytes(),
            "episode",
            json.dumps(state.episode, separators=(",", ":")),
        ]
        return self.key(state.entity), args

    def _decode(self, entity: str, row: dict[bytes, bytes]) -> EntityState:
        if not row:
            return EntityState(entity, self.n_channels)
        try:
            ts = np.frombuffer(row[b"ts"], dtype=_TS).astype(np.int64)
            flat = np.frombuffer(row[b"values"], dtype=_VALUES).astype(np.float64)
            if flat.size != len(ts) * self.n_channels:
                raise StateDecodeError(
                    f"{flat.size} values for {len(ts)} timestamps does not fit {self.n_channels} "
                    "channels; a model with other channels needs its own namespace"
                )
            last = row[b"last_ts_ms"]
            return EntityState(
                entity=entity,
                n_channels=self.n_channels,
                version=int(row[b"version"]),
                last_ts_ms=int(last) if last else None,
                count=int(row[b"count"]),
                ts=ts,
                values=flat.reshape(len(ts), self.n_channels),
                episode=json.loads(row[b"episode"]),
            )
        except StateDecodeError as exc:
            raise StateDecodeError(f"state of {entity!r} at {self.key(entity)!r}: {exc}") from None
        except (KeyError, ValueError) as exc:
            where = f"state of {entity!r} at {self.key(entity)!r}"
            raise StateDecodeError(f"{where} is corrupt: {exc!r}") from exc


@contextlib.contextmanager
def _outage() -> Iterator[None]:
    """Connection errors, timeouts and a cluster without a reachable master for a slot as
    ``StoreUnavailable``; errors Redis answered with (a foreign value, a full memory) stay what
    they are: they are about particular keys."""
    try:
        yield
    except (RedisError, RedisClusterException) as exc:
        if is_unreachable(exc):
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        raise


def redis_client_from_url(
    url: str,
    password: str | None = None,
    ssl_ca: str | None = None,
    socket_timeout_s: float = 5.0,
    connect_timeout_s: float = 5.0,
    health_check_interval_s: int = 30,
    **extra: Any,
) -> RedisClient:
    """A binary-safe client without client-side retries, for ``redis://``, ``rediss://`` (TLS),
    ``unix:///path/to/redis.sock[?db=N]`` (a Unix domain socket) or, for a Redis Cluster,
    ``redis+cluster://host:port[,host:port...]`` (``rediss+cluster://`` with TLS) URLs.

    ``password`` overrides one in the URL (keep secrets out of URLs that end up in configs); ``ssl_ca``
    is a CA bundle for ``rediss://``. The worker retries with its own backoff, so the client fails fast.
    A cluster client connects at once to learn the slot layout; when no seed node answers it
    raises ``StoreUnavailable``.
    """
    parts = urlsplit(url)
    scheme = parts.scheme
    if scheme not in URL_SCHEMES:
        raise ValueError(
            f"Redis URL must start with redis://, rediss:// or unix://, or redis+cluster:// or "
            f"rediss+cluster:// for a Redis Cluster, got {redact_url(url)!r}")
    if scheme == "unix" and not parts.path:
        raise ValueError(f"a unix:// Redis URL needs the socket path, got {redact_url(url)!r}")
    if scheme in CLUSTER_SCHEMES:
        validate_cluster_url(url)
    kwargs: dict[str, Any] = {
        "socket_timeout": socket_timeout_s,
        "socket_connect_timeout": connect_timeout_s,
        "health_check_interval": health_check_interval_s,
        "retry": Retry(NoBackoff(), 0),
        "retry_on_error": [],
        "decode_responses": False,
    }
    if password is not None:
        kwargs["password"] = password
    if ssl_ca is not None:
        if scheme not in ("rediss", "rediss+cluster"):
            raise ValueError("ssl_ca needs a rediss:// or rediss+cluster:// URL (TLS)")
        kwargs["ssl_ca_certs"] = ssl_ca
        kwargs["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    kwargs.update(extra)
    if scheme in CLUSTER_SCHEMES:
        kwargs.pop("password", None)
        with _outage():
            return cluster_client_from_url(url, password, **kwargs)
    client = redis.Redis.from_url(url, **kwargs)
    if password is not None:
        # from_url lets the URL's password (user info or ``?password=``) beat the keyword: put the
        # flag's one back, as documented. The user name in the URL is kept.
        client.connection_pool.connection_kwargs["password"] = password
    return client


def redact_url(url: str) -> str:
    """``url`` with any password (in the user info or a ``password=`` query) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            if ":" in userinfo:
                userinfo = userinfo.split(":", 1)[0] + ":***"
            netloc = f"{userinfo}@{host}"
        query = parts.query
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() == "password" for k, _ in pairs):
            query = urlencode([(k, "***" if k.lower() == "password" else v) for k, v in pairs], safe="*")
        if (netloc, query) == (parts.netloc, parts.query):
            return url
        # by hand: urlunsplit would turn unix:///path into unix:/path (an empty netloc is dropped)
        fragment = f"#{parts.fragment}" if parts.fragment else ""
        sep = "//" if "//" in url else ""
        return f"{parts.scheme}:{sep}{netloc}{parts.path}{'?' if query else ''}{query}{fragment}"
    except ValueError:
        return "<unparseable url>"
