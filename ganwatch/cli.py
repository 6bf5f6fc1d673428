"""The ``ganwatch`` command: the one place that wires real connectors into the core.

Building the parser imports no torch, pandas, matplotlib or Kafka client, so ``ganwatch --help``
and ``ganwatch COMMAND --help`` answer at once: each subcommand module keeps its heavy imports
inside its functions, and ``serve``'s module is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Callable

from detector import __version__
from ganwatch.extra import MissingExtra
from ganwatch.runtime import configure_logging


class UsageError(ValueError):
    """Bad command-line input: reported as one line, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse's own errors (a missing flag, a value of the wrong type) as one line, exit
    status 2, like every other input error: the usage block is what ``--help`` is for.
    Subcommands use the same class (``add_subparsers`` takes the parent's)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        message = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def deferred(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """A command function imported from ``module`` only when the command runs."""

    def run(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(module), name)(args)

    run.__qualname__ = f"{module}.{name}"
    return run


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    from ganwatch.settings import add_serve_arguments

    p = sub.add_parser("serve", help="consume readings from Kafka and publish alerts")
    add_serve_arguments(p)
    p.set_defaults(func=deferred("ganwatch.serve", "cmd_serve"))


def build_parser() -> argparse.ArgumentParser:
    from ganwatch.demo import add_demo_parser
    from ganwatch.offline_cli import add_offline_parsers
    from ganwatch.replay import add_replay_parser
    from ganwatch.schema import add_schema_parser

    parser = OneLineParser(
        prog="ganwatch", description="Streaming time-series anomaly detection (LSTM GAN)."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print the version and exit")
    # None when not given, so that `serve` can take its level from GANWATCH_LOG_LEVEL or --config
    parser.add_argument("--log-level", default=None,
                        help="DEBUG, INFO, WARNING or ERROR (default INFO; serve: its settings)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_offline_parsers(sub)
    add_serve_parser(sub)
    add_replay_parser(sub)
    add_demo_parser(sub)
    add_schema_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    name = str(args.log_level or "INFO")
    level = getattr(logging, name.upper(), None)
    if not isinstance(level, int):
        parser.exit(2, f"ganwatch: error: --log-level: unknown level {name!r}\n")
    configure_logging(level)  # serve re-applies level and format once its settings are loaded
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("ganwatch: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, PermissionError, MissingExtra) as exc:
        # DataError, ArtifactError, SettingsError, MissingExtra and UsageError derive from ValueError
        message = " ".join(str(exc).split())
        print(f"ganwatch {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
