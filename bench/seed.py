"""Seed spread: ``ABLATED``'s headline figures on SKAB and TEP, trained with other seeds.

A GAN's training depends on its seed (initial weights, batch order, the gradient penalty's random
mixes), and so do its scores. Two variants that differ by less than this spread, measured at one
seed, have not been told apart. NAB is left out: its twelve signals take about nine minutes per
seed on two cores, and its figures rest on a handful of incidents anyway.
"""

from __future__ import annotations

import logging

from bench import skab, tep
from bench.quality import ABLATED

log = logging.getLogger(__name__)

SEEDS = (1, 2, 3)  # seed 0, the default, is the main tables' run
FIGURES = ("valve1_f1", "valve1_far_pct", "anomaly_free_far_pct", "tep_far_pct",
           "tep_fdr_pct_without_3_9_15")


def figures(valve1: dict, free: dict, tep_result: dict) -> dict:
    """One seed's headline figures from the three benchmarks' results for one detector."""
    return {"valve1_f1": valve1["f1"], "valve1_far_pct": valve1["far_pct"],
            "anomaly_free_far_pct": free["far_pct"], "tep_far_pct": tep_result["far_pct"],
            "tep_fdr_pct_without_3_9_15": tep_result["mean_fdr_pct_without_3_9_15"]}


def main_run(out: dict) -> dict | None:
    """Seed 0's figures from the main skab and tep results of the same bench run, if both ran
    with the default seed."""
    try:
        valve1, free = out["skab"]["valve1"][ABLATED], out["skab"]["anomaly_free"][ABLATED]
        tep_result = out["tep"]["detectors"][ABLATED]
    except KeyError:
        return None
    if any(out[name].get("overrides", {}).get("seed", 0) != 0 for name in ("skab", "tep")):
        return None
    return figures(valve1, free, tep_result)


def spread(per_seed: dict[str, dict]) -> dict[str, dict]:
    """Per figure: the lowest, the highest and the mean over the seeds."""
    out = {}
    for name in FIGURES:
        values = [f[name] for f in per_seed.values() if f.get(name) is not None]
        if values:
            out[name] = {"min": min(values), "max": max(values),
                         "mean": round(sum(values) / len(values), 3)}
    return out


def run(seeds: tuple[int, ...] = SEEDS, overrides: dict | None = None, limit: int | None = None,
        free_segments: int = skab.SEGMENTS, faults: tuple[int, ...] | None = None,
        main: dict | None = None) -> dict:
    """Train and score ``ABLATED`` at each seed, as the main tables do at seed 0; seed 0's row
    comes from ``main`` (the bench run's results so far, ``main_run``), and ``spread`` covers
    every row."""
    per_seed = {}
    for seed in seeds:
        config = {**(overrides or {}), "seed": seed}
        valve1 = skab.run(models=(ABLATED,), limit=limit, overrides=config, ablate=False)
        free = skab.run_free(models=(ABLATED,), overrides=config, count=free_segments,
                             ablate=False)
        tep_result = tep.run(models=(ABLATED,), overrides=config, faults=faults, ablate=False)
        per_seed[str(seed)] = figures(valve1[ABLATED], free[ABLATED],
                                      tep_result["detectors"][ABLATED])
        log.info("seed %d: %s", seed, per_seed[str(seed)])
    first = main_run(main or {})
    if first is not None:
        per_seed = {"0": first, **per_seed}
    return {"model": ABLATED, "seeds": per_seed, "spread": spread(per_seed)}
