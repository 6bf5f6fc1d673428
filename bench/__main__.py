"""``python -m bench``: run the benchmarks and print one JSON document.

Quality: ``skab`` (valve1 table and the anomaly-free check), ``tep`` and ``nab``, each with
ganwatch's ``lstm-gan`` and ``lstm-ae`` next to the reference detectors of ``bench.reference``;
``quality`` at the top of the JSON holds one headline row per dataset x detector. ``seed``
trains ``lstm-gan`` on SKAB and TEP with seeds 1-3 and reports the spread of its figures over
seeds 0-3 (seed 0 from the same run's skab and tep, when they ran). Also ``load``
(training seconds with and without a concurrent training process, on a SKAB file and on issue
#9's 20,000-row budget file: ``bench.load``), ``scoring`` and ``streaming``.

``--only skab,tep`` picks some; ``--limit N`` uses the first N SKAB files; ``--quick`` shrinks
every benchmark to a smoke run (figures then only show that the code works); ``--nab-rows N`` /
``--nab-epochs N`` limit NAB training; ``--set key=value`` (repeatable) changes one
``TrainConfig`` field for every quality dataset, to check how the result depends on it
(``--set epochs=30 --set hidden=64``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

BENCHES = ("skab", "tep", "nab", "seed", "load", "scoring", "streaming")
QUALITY = ("skab", "tep", "nab")
QUICK = {"epochs": 1}  # training fields a --quick run changes, unless --set gives them
QUICK_NAB_ROWS = 1000
QUICK_BUDGET_ROWS = 2000


def parse_overrides(items: list[str]) -> dict:
    """``["epochs=30", "threshold_margin=1.5"]`` -> typed ``TrainConfig`` fields."""
    from dataclasses import fields

    from training.trainer import TrainConfig

    def kind_of(field) -> type:  # a field whose default is None takes its annotation's number
        default = getattr(TrainConfig(), field.name)
        if default is not None:
            return type(default)
        return int if str(field.type).startswith("int") else float

    types = {f.name: kind_of(f) for f in fields(TrainConfig)}
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
    parser.add_argument("--nab-rows", type=int, default=None,
                        help="train on the first N rows of each NAB signal (breaks the protocol)")
    parser.add_argument("--nab-epochs", type=int, default=None, help="epochs for NAB training")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a training default for every quality dataset (repeatable)")
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

    for flag in ("nab_rows", "nab_epochs"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    training = {**(QUICK if args.quick else {}), **overrides}

    out: dict = {}
    for name in BENCHES:
        if name not in chosen:
            continue
        started = time.perf_counter()
        if name == "skab":
            from bench import skab

            limit = args.limit if args.limit is not None else (2 if args.quick else None)
            out[name] = {"valve1": skab.run(limit=limit, overrides=training),
                         "anomaly_free": skab.run_free(overrides=training,
                                                       count=2 if args.quick else skab.SEGMENTS)}
        elif name == "tep":
            from bench import tep

            out[name] = tep.run(overrides=training, faults=(1, 3) if args.quick else None)
        elif name == "nab":
            from bench import nab

            rows = args.nab_rows if args.nab_rows is not None else \
                (QUICK_NAB_ROWS if args.quick else None)
            out[name] = nab.run(overrides=training, max_rows=rows, epochs=args.nab_epochs)
        elif name == "seed":
            from bench import seed, skab

            out[name] = seed.run(seeds=(1,) if args.quick else seed.SEEDS, overrides=training,
                                 limit=2 if args.quick else None,
                                 free_segments=2 if args.quick else skab.SEGMENTS,
                                 faults=(1, 3) if args.quick else None, main=out)
        elif name == "load":
            from bench import load, skab

            rows = QUICK_BUDGET_ROWS if args.quick else load.BUDGET_ROWS
            out[name] = load.run(skab.skab_files()[0], budget_size=rows, overrides=training)
        elif name == "scoring":
            from bench import scoring

            out[name] = scoring.run(batches=(1, 512) if args.quick else (1, 64, 512, 4096))
        else:
            from bench import streaming

            out[name] = streaming.run(quick=args.quick)
        if name in (*QUALITY, "seed", "load") and training:
            out[name]["overrides"] = training
        out[name]["bench_seconds"] = round(time.perf_counter() - started, 1)
    if any(name in chosen for name in QUALITY):
        from bench.quality import ablation_summary, summary

        out = {"quality": summary(out), "ablation": ablation_summary(out), **out}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
