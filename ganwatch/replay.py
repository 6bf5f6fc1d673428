"""``ganwatch replay``: publish a CSV or Parquet file to Kafka in the input contract."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import TYPE_CHECKING, Iterator

import numpy as np

from detector.message import iso_ms
from ganwatch.security import KAFKA_SECURITY, load_kafka_security
from ganwatch.settings import add_serve_arguments

if TYPE_CHECKING:
    from connectors.file import Table

log = logging.getLogger(__name__)


def add_replay_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="publish a data file to a Kafka topic as sensor readings")
    p.add_argument("--data", required=True, help="CSV (any delimiter) or Parquet file")
    p.add_argument("--bootstrap-servers", required=True, help="HOST:PORT[,HOST:PORT]")
    p.add_argument("--topic", required=True, help="input topic of the worker")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--entity", default=None,
                     help="entity name of every row (message key and 'entity' field); required "
                          "unless --entity-column")
    who.add_argument("--entity-column", default=None,
                     help="column naming each row's entity in a fleet file: each record is keyed "
                          "by its row's entity (default: none; required unless --entity)")
    p.add_argument("--timestamp-column", default=None,
                   help="timestamp column (default: none, and readings are stamped 1 s apart "
                        "from now)")
    p.add_argument("--channels", default=None,
                   help="comma-separated channel columns (default: every numeric column)")
    p.add_argument("--exclude-columns", default=None,
                   help="comma-separated columns to leave out (default: none)")
    p.add_argument("--sep", default=None, help="CSV delimiter (default: detected)")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, default=None,
                      help="readings per second (default: as fast as possible)")
    pace.add_argument("--speedup", type=float, default=None,
                      help="replay the file's own timing X times faster, needs timestamps "
                           "(default: as fast as possible)")
    p.add_argument("--ts-format", choices=["iso", "epoch-ms"], default="iso",
                   help="how 'ts' is written, the worker reads both (default %(default)s)")
    p.add_argument("--limit", type=int, default=None,
                   help="publish at most N readings (default: the whole file)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (default: a bar on a terminal)")
    # the same flags, GANWATCH_* variables and checks as `ganwatch serve`
    add_serve_arguments(p.add_argument_group("Kafka security (as serve)"), KAFKA_SECURITY)
    p.set_defaults(func=cmd_replay)


def row_entities(table: Table, entity: str | None) -> list[str]:
    """Each row's entity: its entity column's (a fleet file), else ``entity`` for every row."""
    if table.entities is not None:
        return table.entities.tolist()
    if entity is None:
        raise ValueError("give an entity name or read the table with its entity column")
    return [entity] * len(table.values)


def messages(table: Table, entity: str | None, ts_format: str, start_ms: int
             ) -> Iterator[tuple[int, bytes]]:
    """(ts_ms, JSON value) per row, in file order; a fleet table's rows name their own entity."""
    ts = table.ts_ms if table.ts_ms is not None else start_ms + 1000 * np.arange(len(table.values))
    for t, who, row in zip(ts.tolist(), row_entities(table, entity), table.values.tolist()):
        value = {
            "entity": who,
            "ts": iso_ms(t) if ts_format == "iso" else t,
            "values": dict(zip(table.channels, row)),
        }
        yield t, json.dumps(value, separators=(",", ":")).encode()


def publish(
    table: Table, entity: str | None, bootstrap: str, topic: str, *, rate: float | None = None,
    speedup: float | None = None, ts_format: str = "iso", limit: int | None = None,
    progress: bool = False, security: dict | None = None,
) -> int:
    """Send the rows, keyed by their entity; return how many were acknowledged by the broker."""
    from connectors.kafka import KafkaSink

    sink = KafkaSink(bootstrap, security or {}, linger_ms=20)
    total = len(table.values) if limit is None else min(limit, len(table.values))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=f"replay {entity or 'fleet'}", unit="msg")
    keys = [e.encode("utf-8") for e in row_entities(table, entity)]
    started, first_ts, sent = time.monotonic(), None, 0
    try:
        for key, (t, value) in zip(keys, messages(table, entity, ts_format,
                                                  int(time.time() * 1000))):
            if sent >= total:
                break
            if rate:
                wait = started + sent / rate - time.monotonic()
            elif speedup:
                first_ts = t if first_ts is None else first_ts
                wait = started + (t - first_ts) / 1000 / speedup - time.monotonic()
            else:
                wait = 0
            if wait > 0:
                sink.flush()
                time.sleep(wait)
            sink.send(topic, key, value)
            sent += 1
            if sent % 5000 == 0:
                sink.flush()
            if bar:
                bar.update(1)
        sink.flush()
    finally:
        sink.close()
        if bar:
            bar.close()
    return sent


def cmd_replay(args: argparse.Namespace) -> int:
    from connectors.file import DataError, read_table

    if args.rate is not None and args.rate <= 0:
        raise DataError(f"--rate must be positive, got {args.rate}")
    if args.speedup is not None and args.speedup <= 0:
        raise DataError(f"--speedup must be positive, got {args.speedup}")
    if args.speedup is not None and args.timestamp_column is None:
        raise DataError("--speedup replays the file's own timing: give --timestamp-column")
    security = load_kafka_security(vars(args), os.environ, args.bootstrap_servers)
    split = (lambda s: [c.strip() for c in s.split(",") if c.strip()] if s else None)
    if args.entity_column is not None and not args.entity_column.strip():
        raise DataError("--entity-column must name a column, got an empty name")
    table = read_table(args.data, sep=args.sep, timestamp_column=args.timestamp_column,
                       channels=split(args.channels),
                       exclude_columns=split(args.exclude_columns) or (),
                       entity_column=args.entity_column)
    sent = publish(table, args.entity, args.bootstrap_servers, args.topic, rate=args.rate,
                   speedup=args.speedup, ts_format=args.ts_format, limit=args.limit,
                   progress=not args.no_progress and sys.stderr.isatty(), security=security)
    summary = {"topic": args.topic, "entity": args.entity, "published": sent,
               "channels": table.channels}
    if table.entities is not None:
        summary.update(entity_column=args.entity_column,
                       entities=len(dict.fromkeys(table.entities.tolist())))
    print(json.dumps(summary))
    return 0
