"""A real three-master Redis Cluster on loopback, from the ``redis-server`` the tests already use.

Each master is an ``EmbeddedRedis`` started with ``--cluster-enabled yes``; the slots are split
in three (``CLUSTER ADDSLOTSRANGE``, or ``ADDSLOTS`` on Redis 6), the nodes MEET, and ``start``
returns once every node reports ``cluster_state:ok``. No replicas, no persistence of data; a node's
``nodes-P.conf`` stays in its temp dir, so ``restart_node`` brings it back with its slots (empty).
Stopped by PID like every embedded server.
"""

from __future__ import annotations

import random
import subprocess
import time
from pathlib import Path
from typing import Self

import redis
from redis.exceptions import ResponseError

from connectors.embedded import EmbeddedRedis, _port_free, redis_binary

SLOTS = 16384
BUS_OFFSET = 10000  # Redis before 7 puts the cluster bus on port + 10000


def cluster_port() -> int:
    """A loopback port free for a node and for its cluster bus (port + 10000)."""
    for _ in range(200):
        port = random.randrange(20000, 55000)
        if _port_free(port) and _port_free(port + BUS_OFFSET):
            return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


def cluster_mode_missing(binary: Path | None = None) -> str | None:
    """Why ``redis-server`` cannot run in cluster mode here, or None when it can."""
    try:
        binary = binary or redis_binary()
    except RuntimeError as exc:
        return str(exc)
    done = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30)
    if done.returncode != 0 or "v=" not in done.stdout:
        return f"{binary} --version failed: {done.stdout or done.stderr}"
    major = int(done.stdout.split("v=")[1].split(".")[0])
    if major < 3:
        return f"{binary} is Redis {major}, which has no cluster mode"
    return None


class ClusterNodeServer(EmbeddedRedis):
    """One master of an ``EmbeddedRedisCluster``."""

    name = "redis-cluster-node"

    def _command(self) -> list[str]:
        return super()._command() + [
            "--cluster-enabled", "yes", "--cluster-config-file", str(self.workdir / f"nodes-{self.port}.conf"),
            "--cluster-node-timeout", "5000"]


class EmbeddedRedisCluster:
    """Three cluster masters on 127.0.0.1; ``url`` is a ``redis+cluster://`` URL naming them all."""

    def __init__(self, masters: int = 3, startup_timeout_s: float = 30.0) -> None:
        self.startup_timeout_s = startup_timeout_s
        self.nodes = [ClusterNodeServer(cluster_port()) for _ in range(masters)]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    def node_client(self, port: int) -> redis.Redis:
        """A plain client on one master (for counting what landed where)."""
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)

    def start(self) -> Self:
        try:
            for node in self.nodes:
                node.start()
            self._assign_slots()
            for node in self.nodes[1:]:
                with self.node_client(node.port) as client:
                    client.execute_command("CLUSTER MEET", "127.0.0.1", self.nodes[0].port)
            self.wait_ok()
        except BaseException:
            self.close()
            raise
        return self

    def _assign_slots(self) -> None:
        share = SLOTS // len(self.nodes)
        for i, node in enumerate(self.nodes):
            first, last = i * share, SLOTS - 1 if i == len(self.nodes) - 1 else (i + 1) * share - 1
            with self.node_client(node.port) as client:
                try:
                    client.execute_command("CLUSTER ADDSLOTSRANGE", first, last)
                except ResponseError:  # Redis before 7.0
                    client.execute_command("CLUSTER ADDSLOTS", *range(first, last + 1))

    def wait_ok(self) -> None:
        """Block until every running node says ``cluster_state:ok`` and knows every other node."""
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            states = []
            for node in self.nodes:
                try:
                    with self.node_client(node.port) as client:
                        info = client.execute_command("CLUSTER INFO")
                        states.append(info.get("cluster_state") == "ok"
                                      and int(info.get("cluster_known_nodes", 0)) == len(self.nodes))
                except redis.RedisError:
                    states.append(False)
            if all(states):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"Redis Cluster on {self.ports} not ok after "
                                   f"{self.startup_timeout_s}s: {states}")
            time.sleep(0.1)

    def keys_per_node(self, pattern: str) -> dict[int, int]:
        """How many keys matching ``pattern`` each master holds (SCAN on each, test-side only)."""
        counts = {}
        for node in self.nodes:
            with self.node_client(node.port) as client:
                counts[node.port] = sum(1 for _ in client.scan_iter(match=pattern, count=1000))
        return counts

    def restart_node(self, index: int) -> None:
        """Stop one master and start it again on its port (its data is gone, its slots are not)."""
        self.nodes[index].restart()
        self.wait_ok()

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
