"""The benchmarks' building blocks work (their figures are not asserted: performance lives in
``make bench``, never in timed tests)."""

from dataclasses import replace

import numpy as np
import pytest

from bench import nab, quality, skab, tep
from bench.scoring import N_CHANNELS, default_detector
from training.trainer import TrainConfig


def need(path):
    """Skip, naming the path, when a shared dataset or tool is not checked out beside the repo."""
    if not path.exists():
        pytest.skip(f"needs {path}")
    return path


def test_the_benchmark_detector_takes_every_scoring_path():
    det = default_detector("cpu")
    assert det.level.explained.any() and det.spec.score.flat and det.spec.score.error.bias_weight
    windows = np.random.default_rng(0).normal(size=(20, det.window, N_CHANNELS))
    windows[:5, :, 3] = 1.0  # stuck: the flat term must fire
    batch = det.score(windows)
    assert np.isfinite(batch.scores).all()
    assert batch.scores[:5].min() > batch.scores[5:].max()


@pytest.mark.skipif(not (skab.SKAB / "valve1").is_dir(),
                    reason=f"benchmark data missing: {skab.SKAB / 'valve1'}")
def test_skab_protocol_counts_every_test_row_of_a_file():
    need(skab.SKAB / "valve1")
    files = skab.skab_files("valve1")
    assert len(files) == 16
    table_rows = sum(1 for _ in open(files[0])) - 1
    row = skab.run_file(files[0], replace(TrainConfig(), epochs=1, device="cpu"))
    assert row["tp"] + row["fp"] + row["fn"] + row["tn"] == table_rows - skab.TRAIN_ROWS
    assert row["tp"] + row["fn"] == 401  # valve1/0.csv labels 401 anomalous rows, all after row 400


def test_overrides_are_typed_training_fields_and_refuse_anything_else():
    from bench.__main__ import parse_overrides

    assert parse_overrides(["epochs=30", "threshold_margin=1.5", "center_inputs=false"]) == {
        "epochs": 30, "threshold_margin": 1.5, "center_inputs": False}
    for bad in (["nope=1"], ["epochs"], ["epochs=x"], ["model=lstm-ae"]):
        with pytest.raises(ValueError):
            parse_overrides(bad)


def test_tep_rates_count_normal_rows_and_fault_rows_apart():
    normal = np.zeros(960, dtype=int)
    normal[:31] = 1  # left out
    normal[100:110] = 1  # 10 false alarms
    fault1 = np.zeros(960, dtype=int)
    fault1[150:960] = 1  # 10 false alarms before the onset, all 800 faulty rows
    fault3 = np.zeros(960, dtype=int)
    fault3[160:360] = 1  # 200 of 800
    rates = tep.tep_rates(normal, {1: fault1, 3: fault3})
    assert rates["normal_rows"] == (960 - 31) + 2 * (160 - 31)
    assert rates["false_alarms"] == 20
    assert rates["far_pct"] == round(100 * 20 / rates["normal_rows"], 2)
    assert rates["fdr_pct"] == {"01": 100.0, "03": 25.0}
    assert rates["mean_fdr_pct"] == 62.5
    assert rates["mean_fdr_pct_without_3_9_15"] == 100.0


def test_anomaly_free_segments_and_false_alarm_rate():
    assert skab.segments(9405) == [(i * 1150, (i + 1) * 1150) for i in range(8)]
    with pytest.raises(ValueError):
        skab.segments(9000)
    a, b = np.zeros(1150, dtype=int), np.zeros(1150, dtype=int)
    a[:400] = 1  # training rows never count
    a[500:505] = 1
    b[-3:] = 1
    far = skab.free_far([a, b])
    assert far["scored_rows"] == 1500 and far["false_alarms"] == 8
    assert far["far_pct"] == round(100 * 8 / 1500, 2)
    assert far["false_alarms_per_segment"] == [5, 3]


def test_nab_counts_one_fp_per_separate_alarm_outside_the_windows():
    need(quality.SHARED / "tools" / "nab_eval.py")
    t = np.arange(100, dtype=float) * 300  # 5-minute rows
    truth = [(t[40], t[50]), (t[80], t[90])]
    flags = np.zeros(100, dtype=int)
    flags[[5, 10, 45, 46, 47]] = 1  # two alarms outside, one run inside the first window
    assert nab.signal_counts(truth, t, flags) == {"tp": 1, "fp": 2, "fn": 1, "detections": 3}
    # widened by 35 rows the runs merge into one interval reaching into the second window
    assert nab.signal_counts(truth, t, flags, pad_rows=35) == {"tp": 2, "fp": 0, "fn": 0,
                                                                "detections": 1}
    total = nab.dataset_total([{"tp": 1, "fp": 2, "fn": 1}, {"tp": 0, "fp": 0, "fn": 2}])
    assert total["f1"] == round(2 / (2 + 2 + 3), 3) and total["false_alarms_per_signal"] == 1.0


def test_a_failed_nab_signal_counts_every_window_as_missed():
    record = nab._failed([(0, 1), (5, 6)], RuntimeError("too few windows"))
    agg = nab.aggregate({"s": {**record, "train_seconds": None}})
    assert (agg["tp"], agg["fp"], agg["fn"]) == (0, 0, 2)
    assert agg["errors"] == ["s: RuntimeError: too few windows"]


def test_stream_rule_follows_the_trained_gap_when_the_result_has_one():
    config = TrainConfig(max_gap_ms=5000)

    class Old:
        pass

    class New:
        max_gap_ms = 42

    assert quality.stream_for(Old(), config).max_gap_ms == 5000
    assert quality.stream_for(New(), config).max_gap_ms == 42


def test_pca_reproduces_the_tep_reference_table_roughly():
    need(tep.TEP / "train.csv")
    out = tep.run(models=())["detectors"]
    assert out["pca-t2"]["components"] == 31
    assert abs(out["pca-t2"]["far_pct"] - 2.1) < 1.0
    assert abs(out["pca-t2"]["mean_fdr_pct_without_3_9_15"] - 63.6) < 3
    assert abs(out["pca-q"]["far_pct"] - 15.6) < 2
    assert abs(out["pca-q"]["mean_fdr_pct_without_3_9_15"] - 77.9) < 3


def test_rolling_z_reproduces_the_nab_reference_counts_roughly():
    need(nab.NAB / "labels" / "combined_windows.json")
    out = nab.run(models=(), signals=nab._nab_eval().DEV_DATASETS["realKnownCause"])
    z = out["realKnownCause"]["rolling-z"]
    assert abs(z["tp"] - 9) <= 1 and abs(z["fp"] - 138) <= 10 and z["tp"] + z["fn"] == 19
    assert abs(z["widened_100"]["tp"] - 10) <= 1 and abs(z["widened_100"]["fp"] - 44) <= 5


def test_quick_tep_run_prints_a_quality_row_per_detector(capsys):
    need(tep.TEP / "train.csv")
    import json

    from bench.__main__ import main

    assert main(["--only", "tep", "--quick"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = [r for r in out["quality"] if r["dataset"] == "tep"]
    assert sorted(r["detector"] for r in rows) == ["lstm-ae", "lstm-gan", "pca-q", "pca-t2"]
    assert all(r["far_pct"] is not None and r["train_seconds"] is not None for r in rows)
    assert out["tep"]["overrides"] == {"epochs": 1}
    # the threshold's false-alarm target beside the achieved share of normal windows
    for r in rows:
        if r["detector"].startswith("lstm"):
            assert r["false_alarm_target_pct"] == 0.1 and 0 <= r["window_far_pct"] <= 100
        else:
            assert "false_alarm_target_pct" not in r


def test_unknown_benchmark_is_refused():
    from bench.__main__ import main

    with pytest.raises(SystemExit):
        main(["--only", "nope"])


def test_the_ablation_refits_the_product_calibration_per_variant():
    """'all terms' is exactly what training wrote; a variant without a term has no such term."""
    from bench.ablation import VARIANTS, variants
    from training.trainer import train

    rng = np.random.default_rng(0)
    t = np.arange(300)
    values = np.stack([np.sin(t / 3) + 0.1 * rng.normal(size=300),
                       np.cos(t / 3) + 0.1 * rng.normal(size=300)], axis=1)
    ts = (t * 1000).astype(np.int64)
    config = replace(TrainConfig(), window=8, epochs=1, hidden=8, latent=4, device="cpu")
    result = train(ts, values, ["a", "b"], config)
    out = variants(result, config, ts, values)
    assert set(out) == set(VARIANTS)
    det, thr = out["all terms"]
    assert thr.value == result.threshold.value and det.spec.score == result.spec.score
    assert out["no spike term"][0].spec.score.peak is None
    assert out["no critic"][0].spec.score.critic is None
    assert out["no per-channel units"][0].spec.score.error.channel_scale == ()
    windows = np.stack([values[i - 8:i] for i in range(8, 40)])
    np.testing.assert_allclose(det.score(windows).scores,
                               result.detector().score(windows).scores)


def test_the_tables_show_every_detector_and_variant_of_a_run():
    from bench.quality import ablation_summary, summary
    from bench.table import tables

    run = {"skab": {"valve1": {"lstm-gan": {"f1": 0.8, "far_pct": 3.5, "train_seconds_per_file": 2},
                               "pca-q": {"f1": 0.5, "far_pct": 33.6},
                               "ablation": {"all terms": {"f1": 0.8, "far_pct": 3.5},
                                            "no critic": {"f1": 0.7, "far_pct": 4.0}}}},
           "tep": {"detectors": {"lstm-gan": {"far_pct": 0.0, "mean_fdr_pct": 49.0}}}}
    bench = {"quality": summary(run), "ablation": ablation_summary(run)}
    assert [r["detector"] for r in bench["quality"]] == ["lstm-gan", "pca-q", "lstm-gan"]
    text = tables(bench)
    assert "| lstm-gan | 0.8 | 3.5 | 2 |" in text and "| pca-q | 0.5 | 33.6 | – |" in text
    assert "| no critic | 0.7 | 4.0 |" in text
    assert "**tep**" in text and "**nab/realKnownCause**" not in text


def test_seed_spread_takes_seed_0_from_the_same_run_only_at_the_default_seed():
    from bench import seed

    fig = {"f1": 0.8, "far_pct": 3.0}
    run = {"skab": {"valve1": {"lstm-gan": fig}, "anomaly_free": {"lstm-gan": {"far_pct": 9.0}}},
           "tep": {"detectors": {"lstm-gan": {"far_pct": 0.0,
                                              "mean_fdr_pct_without_3_9_15": 80.0}}}}
    first = seed.main_run(run)
    assert first == {
        "valve1_f1": 0.8, "valve1_far_pct": 3.0, "anomaly_free_far_pct": 9.0, "tep_far_pct": 0.0,
        "tep_fdr_pct_without_3_9_15": 80.0}
    assert seed.main_run({"tep": run["tep"]}) is None  # skab did not run
    assert seed.main_run({**run, "tep": {**run["tep"], "overrides": {"seed": 4}}}) is None
    other = dict(first, valve1_f1=0.7, tep_fdr_pct_without_3_9_15=None)
    spread = seed.spread({"0": first, "1": other})
    assert spread["valve1_f1"] == {"min": 0.7, "max": 0.8, "mean": 0.75}
    assert spread["tep_fdr_pct_without_3_9_15"] == {"min": 80.0, "max": 80.0, "mean": 80.0}


def test_the_seed_table_lists_every_seed_and_the_range():
    from bench.table import tables

    one = {"valve1_f1": 0.83, "valve1_far_pct": 3.8, "anomaly_free_far_pct": 8.7,
           "tep_far_pct": 0.0, "tep_fdr_pct_without_3_9_15": 82.7}
    two = dict(one, valve1_f1=0.815, tep_fdr_pct_without_3_9_15=87.3)
    from bench.seed import spread

    seeds = {"0": one, "1": two}
    text = tables({"seed": {"model": "lstm-gan", "seeds": seeds, "spread": spread(seeds)}})
    assert "**seed spread (lstm-gan)**" in text
    assert "| 0 | 0.83 | 3.8 | 8.7 | 0 | 82.7 |" in text
    assert "| 1 | 0.815 | 3.8 | 8.7 | 0 | 87.3 |" in text
    assert "| lowest – highest | 0.815 – 0.83 | 3.8 – 3.8 |" in text
    assert "82.7 – 87.3 |" in text


def test_quick_seed_run_trains_at_each_seed(capsys):
    need(skab.SKAB / "valve1")
    need(tep.TEP / "train.csv")
    import json

    from bench.__main__ import main

    assert main(["--only", "seed", "--quick"]) == 0
    out = json.loads(capsys.readouterr().out)["seed"]
    assert list(out["seeds"]) == ["1"]  # the main skab and tep did not run: no seed 0 row
    figures = out["seeds"]["1"]
    assert 0 <= figures["valve1_f1"] <= 1 and 0 <= figures["anomaly_free_far_pct"] <= 100
    assert figures["tep_fdr_pct_without_3_9_15"] is not None
    assert out["spread"]["valve1_f1"]["min"] == out["spread"]["valve1_f1"]["max"]
    assert out["overrides"] == {"epochs": 1}


def test_budget_file_is_regular_and_trains_in_the_planned_epochs():
    from bench import load
    from training.trainer import epoch_plan

    ts, values, channels = load.budget_rows(3000)
    assert values.shape == (3000, load.BUDGET_CHANNELS) and len(channels) == load.BUDGET_CHANNELS
    assert set(np.diff(ts)) == {1000}  # 1 s apart: no gap, no repeat
    assert values.std(axis=0).min() > 0.5  # each channel a sine, not the noise alone
    # at issue #9's 20,000 rows the sample budget gives fewer, fuller epochs than the default 15
    fit_rows = int(round(load.BUDGET_ROWS * (1 - TrainConfig().calib_fraction)))
    fit_windows = fit_rows - TrainConfig().window + 1
    epochs, per_epoch, batch = epoch_plan(fit_windows, TrainConfig())
    assert epochs < TrainConfig().epochs and epochs * per_epoch <= TrainConfig().sample_budget
    assert batch == TrainConfig().long_batch_size


def test_quick_load_run_times_skab_and_the_budget_file(capsys):
    need(skab.SKAB / "valve1")
    import json

    from bench.__main__ import QUICK_BUDGET_ROWS, main

    assert main(["--only", "load", "--quick"]) == 0
    out = json.loads(capsys.readouterr().out)["load"]
    assert out["file"] == "valve1/0.csv" and out["epochs"] == 1
    budget = out["budget"]
    assert budget["rows"] == QUICK_BUDGET_ROWS and budget["epochs"] == 1
    for part in (out, budget):
        assert 0 < part["epoch_seconds_alone"] < part["train_seconds_alone"]
        assert 0 < part["epoch_seconds_loaded"] < part["train_seconds_loaded"]
    assert budget["within_target"] == (max(budget["train_seconds_alone"],
                                           budget["train_seconds_loaded"]) <= 60)
