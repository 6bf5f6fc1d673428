"""The threshold rule as a false-alarm target: the target it states, whether it holds on data
like the held-back windows, and how the artifact stores it."""

import json
import math
import shutil

import numpy as np
import pytest

from bench.quality import target_check
from detector.artifact import ArtifactError, load_artifact
from training.calibration import false_alarm_target, fit_threshold, tail_scale
from training.trainer import TrainConfig, train

TARGET = TrainConfig().false_alarm_target
DRAWS = {
    "gaussian": lambda rng, size: rng.normal(size=size),
    "exponential": lambda rng, size: rng.exponential(size=size),
}


def achieved(draw, n: int, margin: float, reps: int = 300, fresh: int = 4000, seed: int = 0):
    """Mean target and mean share of fresh draws at or above the threshold, over ``reps``
    held-back sets of ``n`` independent scores (window 1: every score its own stretch)."""
    rng = np.random.default_rng(seed)
    targets, rates = [], []
    for _ in range(reps):
        threshold = fit_threshold(draw(rng, n), 1, TARGET, margin)
        targets.append(threshold.false_alarm_target)
        rates.append(float(np.mean(draw(rng, fresh) >= threshold.value)))
    return float(np.mean(targets)), float(np.mean(rates))


@pytest.mark.parametrize("kind", sorted(DRAWS))
def test_without_margin_the_target_is_the_chance_of_beating_the_held_back_maximum(kind):
    target, rate = achieved(DRAWS[kind], n=99, margin=0.0)
    assert target == pytest.approx(1 / 100)
    assert rate == pytest.approx(target, rel=0.25)  # exchangeable scores: exactly 1/(n+1)


@pytest.mark.parametrize("kind", sorted(DRAWS))
@pytest.mark.parametrize("margin", [1.0, 3.0])
def test_the_margin_lowers_the_target_and_the_target_holds(kind, margin):
    target, rate = achieved(DRAWS[kind], n=99, margin=margin)
    assert target < 1 / 100 / math.exp(margin / 2)  # each spread of margin divides the rate
    assert rate <= 1.3 * target  # light or exponential tails: the promise is kept
    if kind == "exponential":
        assert rate >= target / 3  # and it is not a loose bound there: the tail is exponential


def test_overlapping_windows_count_as_stretches_of_one_window():
    scores = np.linspace(0.0, 1.0, 100)
    assert false_alarm_target(scores, 1.0, window=32) == pytest.approx(1 / 5)  # 4 stretches
    assert false_alarm_target(scores, 1.0, window=1) == pytest.approx(1 / 101)
    assert false_alarm_target(scores, 0.5, window=1) == pytest.approx(1 / 101)  # never above
    beyond = false_alarm_target(scores, 1.0 + tail_scale(scores), window=32)
    assert beyond == pytest.approx(1 / 5 / math.e)


def test_tail_scale_is_the_exponential_scale_of_the_upper_half():
    rng = np.random.default_rng(1)
    assert tail_scale(rng.exponential(2.0, size=200_000)) == pytest.approx(2.0, rel=0.03)
    assert tail_scale(np.ones(50)) > 0  # constant scores: a tiny scale, no division by zero
    assert false_alarm_target(np.ones(50), 1.0 + 1e-3, window=1) == 0.0


def test_the_rule_in_words_names_its_target():
    threshold = fit_threshold(np.random.default_rng(2).normal(size=100), 32, TARGET, 4.5)
    assert f"false-alarm target {threshold.false_alarm_target:.2g}" in threshold.rule
    assert "4 stretches of 32" in threshold.rule and "4.5 x their robust spread" in threshold.rule
    assert 0 < threshold.false_alarm_target < 1 / 5
    by_target = fit_threshold(np.random.default_rng(2).normal(size=100), 32, 0.002)
    assert by_target.false_alarm_target == pytest.approx(0.002)
    assert "ln(1 / (0.002 x 5))" in by_target.rule


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    rng = np.random.default_rng(0)
    ts = 1000 * np.arange(300, dtype=np.int64)
    values = np.stack([np.sin(np.arange(300) / 3) + 0.1 * rng.normal(size=300),
                       0.2 * rng.normal(size=300)], axis=1)
    config = TrainConfig(model="lstm-ae", window=8, epochs=2, hidden=8, latent=4, seed=0)
    result = train(ts, values, ["a", "b"], config)
    out = tmp_path_factory.mktemp("target")
    result.save(out)
    return out, result


def test_the_artifact_stores_the_target_and_loads_it(artifact):
    out, result = artifact
    meta = json.loads((out / "model.json").read_text())
    assert meta["threshold"]["false_alarm_target"] == result.threshold.false_alarm_target
    assert result.metrics["false_alarm_target"] == result.threshold.false_alarm_target
    assert load_artifact(out, device="cpu").threshold == result.threshold


def test_older_artifacts_load_without_a_target_and_bad_targets_are_refused(artifact, tmp_path):
    out, result = artifact
    old = tmp_path / "old"
    shutil.copytree(out, old)
    meta = json.loads((old / "model.json").read_text())
    del meta["threshold"]["false_alarm_target"]
    (old / "model.json").write_text(json.dumps(meta))
    loaded = load_artifact(old, device="cpu").threshold
    assert loaded.false_alarm_target is None and loaded.value == result.threshold.value
    meta["threshold"]["false_alarm_target"] = 1.5
    (old / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="false_alarm_target"):
        load_artifact(old, device="cpu")


def test_target_check_reports_the_stated_target_beside_the_achieved_window_rate():
    over = [np.array([np.nan, 0, 0, 1, 0]), np.array([np.nan, np.nan, 1, 0])]
    out = target_check([0.001, 0.003, None], over)
    assert out == {"false_alarm_target_pct": 0.2, "window_far_pct": round(100 * 2 / 6, 3),
                   "normal_windows": 6, "normal_windows_over": 2}
    assert target_check([None], [np.array([np.nan])])["window_far_pct"] is None


@pytest.mark.parametrize("kind", sorted(DRAWS))
@pytest.mark.parametrize("target", [1e-3, 1e-2])
def test_the_threshold_keeps_the_target_it_is_given(kind, target):
    """Set by a target (no margin), the stored target is that target and fresh normal scores
    exceed the threshold no more often than it promises."""
    rng = np.random.default_rng(3)
    kept, rates = [], []
    for _ in range(300):
        threshold = fit_threshold(DRAWS[kind](rng, 99), 1, target)
        kept.append(threshold.false_alarm_target)
        rates.append(float(np.mean(DRAWS[kind](rng, 20_000) >= threshold.value)))
    np.testing.assert_allclose(kept, target, rtol=1e-9)
    assert np.mean(rates) <= 1.3 * target


def test_a_target_above_what_the_held_back_windows_can_show_keeps_their_maximum():
    scores = np.random.default_rng(4).normal(size=100)
    threshold = fit_threshold(scores, 32, 0.5)  # 4 stretches: at best 1/5
    assert threshold.value == scores.max() and threshold.false_alarm_target == pytest.approx(0.2)
