"""The benchmarks' building blocks work (their figures are not asserted: performance lives in
``make bench``, never in timed tests)."""

from dataclasses import replace

import numpy as np
import pytest

from bench import skab
from bench.scoring import N_CHANNELS, default_detector
from training.trainer import TrainConfig


def test_the_benchmark_detector_takes_every_scoring_path():
    det = default_detector("cpu")
    assert det.level.explained.any() and det.normaliser.flat_floor and det.normaliser.bias_weight
    windows = np.random.default_rng(0).normal(size=(20, det.window, N_CHANNELS))
    windows[:5, :, 3] = 1.0  # stuck: the flat term must fire
    batch = det.score(windows)
    assert np.isfinite(batch.scores).all()
    assert batch.scores[:5].min() > batch.scores[5:].max()


@pytest.mark.skipif(not (skab.SKAB / "valve1").is_dir(),
                    reason=f"benchmark data missing: {skab.SKAB / 'valve1'}")
def test_skab_protocol_counts_every_test_row_of_a_file():
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
