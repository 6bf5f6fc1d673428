"""The ``ganwatch`` command: the one place that wires real connectors into the core."""

from __future__ import annotations

import argparse
import logging
import sys

from ganwatch.offline_cli import add_offline_parsers
from ganwatch.runtime import configure_logging


class UsageError(ValueError):
    """Bad command-line input: reported as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ganwatch", description="Streaming time-series anomaly detection (LSTM GAN)."
    )
    # None when not given, so that `serve` can take its level from GANWATCH_LOG_LEVEL or --config
    parser.add_argument("--log-level", default=None,
                        help="DEBUG, INFO, WARNING or ERROR (default INFO; serve: its settings)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_offline_parsers(sub)
    from ganwatch.serve import add_serve_parser
    from ganwatch.replay import add_replay_parser
    from ganwatch.demo import add_demo_parser

    add_serve_parser(sub)
    add_replay_parser(sub)
    add_demo_parser(sub)
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
    except (ValueError, FileNotFoundError, PermissionError) as exc:
        # DataError, ArtifactError, SettingsError and UsageError all derive from ValueError
        message = " ".join(str(exc).split())
        print(f"ganwatch {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
