"""``python -m bench``: run the benchmarks and print one JSON document.

``--only skab,scoring,streaming`` picks some; ``--limit N`` uses the first N SKAB files; ``--quick``
shrinks every benchmark to a smoke run (figures then only show that the code works);
``--set key=value`` (repeatable) changes one ``TrainConfig`` field for the SKAB table, to check how
the result depends on it (``--set epochs=30 --set hidden=64``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

BENCHES = ("skab", "scoring", "streaming")


def parse_overrides(items: list[str]) -> dict:
    """``["epochs=30", "threshold_margin=1.5"]`` -> typed ``TrainConfig`` fields."""
    from dataclasses import fields

    from training.trainer import TrainConfig

    types = {f.name: type(getattr(TrainConfig(), f.name)) for f in fields(TrainConfig)}
    out: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or key not in types or key in ("model", "device"):
            raise ValueError(f"expected KEY=VALUE with a TrainConfig field (not model/device), "
                             f"got {item!r}")
        kind = types[key]
        try:
            out[key] = (text.lower() in ("1", "true", "yes")) if kind is bool else \
                (None if text.lower() == "none" else kind(text))
        except ValueError:
            raise ValueError(f"{key} takes a {kind.__name__}, got {text!r}") from None
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(BENCHES),
                        help=f"comma-separated subset of {', '.join(BENCHES)}")
    parser.add_argument("--limit", type=int, default=None, help="first N SKAB files only")
    parser.add_argument("--quick", action="store_true", help="smaller, faster runs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a training default for the SKAB table (repeatable)")
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.set)
    except ValueError as exc:
        parser.error(f"--set: {exc}")
    chosen = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = sorted(set(chosen) - set(BENCHES))
    if unknown or not chosen:
        parser.error(f"--only: unknown benchmark(s) {', '.join(unknown) or '(none given)'}; "
                     f"choose from {', '.join(BENCHES)}")
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be at least 1, got {args.limit}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    out: dict = {}
    for name in BENCHES:
        if name not in chosen:
            continue
        started = time.perf_counter()
        if name == "skab":
            from bench import skab

            limit = args.limit if args.limit is not None else (2 if args.quick else None)
            out[name] = skab.run(limit=limit, overrides=overrides)
            if overrides:
                out[name]["overrides"] = overrides
        elif name == "scoring":
            from bench import scoring

            out[name] = scoring.run(batches=(1, 512) if args.quick else (1, 64, 512, 4096))
        else:
            from bench import streaming

            out[name] = streaming.run(quick=args.quick)
        out[name]["bench_seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
