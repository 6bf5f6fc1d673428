"""Redis Cluster for the state store: ``redis+cluster://`` URLs, and which errors are outages.

``redis+cluster://[user:password@]host:port[,host:port...][/0][?option=value]`` (``rediss+cluster://``
for TLS) names one or more seed nodes; redis-py's ``RedisCluster`` discovers the rest and routes each
key to the master that owns its slot. Every key of an entity carries the entity as a hash tag, so its
state and the compare-and-set script that writes it stay on one master.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.cluster import ClusterNode, RedisCluster
from redis.connection import parse_url
from redis.exceptions import (
    ClusterError, RedisClusterException, SlotNotCoveredError, TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)

# cluster scheme -> the plain scheme redis-py parses the options of
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
_DEFAULT_PORT = 6379
# connection options redis-py's cluster client does not take (it would drop them silently)
_NOT_FOR_CLUSTER = ("health_check_interval", "retry_on_error")


def is_cluster_url(url: str) -> bool:
    """True for ``redis+cluster://`` and ``rediss+cluster://`` URLs."""
    return urlsplit(url).scheme in CLUSTER_SCHEMES


def cluster_nodes(url: str) -> list[tuple[str, int]]:
    """The seed nodes of a cluster URL as (host, port); ValueError naming a bad one.

    Messages never include the user info, where a password may be."""
    hosts = urlsplit(url).netloc.rpartition("@")[2]
    nodes = []
    for piece in (p.strip() for p in hosts.split(",")):
        if not piece:
            continue
        node = urlsplit(f"//{piece}")
        try:
            port = node.port or _DEFAULT_PORT
        except ValueError:
            raise ValueError(f"Redis Cluster node {piece!r} has a bad port") from None
        if not node.hostname:
            raise ValueError(f"Redis Cluster node {piece!r} has no host")
        nodes.append((node.hostname, port))
    if not nodes:
        raise ValueError("a Redis Cluster URL needs at least one host:port")
    return nodes


def validate_cluster_url(url: str) -> None:
    """Raise ValueError (without the password) when ``url`` cannot name a Redis Cluster."""
    cluster_nodes(url)
    path = urlsplit(url).path.strip("/")
    if path not in ("", "0"):
        raise ValueError(f"Redis Cluster has only database 0, the URL names {path!r}")


def cluster_client_from_url(url: str, password: str | None, **kwargs: Any) -> RedisCluster:
    """A ``RedisCluster`` seeded with every node in ``url``, built from the same keyword arguments
    as a single-node client (``retry`` applies to the cluster client: the nodes never retry).

    Options in the URL's query win over ``kwargs`` as in ``redis.from_url``; ``password`` (when
    given) wins over the URL's. Connects at once to learn the slot layout: raises
    ``RedisClusterException`` or ``redis.ConnectionError`` when no seed answers.
    """
    validate_cluster_url(url)
    parts = urlsplit(url)
    nodes = cluster_nodes(url)
    userinfo = parts.netloc.rpartition("@")[0]
    host, port = nodes[0]
    first = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    # the plain URL of the first seed: redis-py parses user, password, TLS and query options
    plain = urlunsplit((CLUSTER_SCHEMES[parts.scheme], f"{userinfo}@{first}" if userinfo else first,
                        "", parts.query, ""))
    options = parse_url(plain)
    for key in ("host", "port", "db"):
        options.pop(key, None)
    retry = kwargs.pop("retry", None)
    for key in _NOT_FOR_CLUSTER:
        kwargs.pop(key, None)
    merged = {**kwargs, **options}
    if password is not None:
        merged["password"] = password
    return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in nodes], retry=retry, **merged)


def is_unreachable(exc: BaseException) -> bool:
    """True when ``exc`` says the server (or a master of the cluster) cannot be reached or did not
    answer in time, or the cluster is reshaping: passing conditions the worker waits out. Errors a
    server answered about particular keys (a foreign value, a full memory) are not."""
    if isinstance(exc, (RedisConnectionError, RedisTimeoutError, ClusterError, TryAgainError,
                        SlotNotCoveredError)):
        return True
    if isinstance(exc, RedisClusterException):
        # "Redis Cluster cannot be connected", raised while re-reading the slot layout after a
        # node failed; "All slots are not covered": the layout is incomplete right now
        cause = exc.__cause__ or exc.__context__
        return "not covered" in str(exc) or (cause is not None and is_unreachable(cause))
    return False
