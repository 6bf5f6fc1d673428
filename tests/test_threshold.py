"""The threshold rule as a false-alarm target: the target it states, whether it holds on data
like the held-back windows, and how the artifact stores it."""

import json
import math
import shutil

import numpy as np
import pytest

from bench.quality import target_check
from detector.artifact import ArtifactError, load_artifact
from detector.term import Parts
from training.calibration import (
    FLOOR_STEP, MIN_TAIL, PEAK_TAIL_STRETCHES, false_alarm_target, fit_floor, fit_threshold,
    calibrate_parts, stretch_peaks, stretches, tail_scale,
)
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
    assert tail_scale(np.ones(50)) == MIN_TAIL  # constant scores: rounding, not a tail
    assert false_alarm_target(np.ones(50), 1.0 + 1.0, window=1) < 1e-40


def test_with_enough_stretches_the_tail_is_fitted_on_their_peaks():
    """Light-tailed (Gaussian) scores: the window scores' upper half follows the body, wider than
    the far tail where the threshold lies. With enough stretches their peaks set the scale: the
    threshold comes lower and fresh normal scores still keep the target. With too few stretches
    to fit, the window scores set it, as before."""
    rng = np.random.default_rng(12)
    held = rng.normal(size=3200)  # 100 stretches of 32
    assert stretches(len(held), 32) >= PEAK_TAIL_STRETCHES
    assert tail_scale(held, 32) < 0.7 * tail_scale(held)  # the peaks' tail is lighter
    few = held[:32 * (PEAK_TAIL_STRETCHES - 1)]
    assert tail_scale(few, 32) == tail_scale(few)
    exponential = rng.exponential(size=3200)  # an exponential tail: the peaks are no lighter
    assert tail_scale(exponential, 32) >= tail_scale(exponential)
    rates, lower = [], []
    for _ in range(40):
        held = rng.normal(size=3200)
        threshold = fit_threshold(held, 32, TARGET)
        assert "the tail fitted on the stretch peaks" in threshold.rule
        body = held.max() + tail_scale(held) * math.log(1 / (TARGET * 101))
        lower.append(body - threshold.value)
        rates.append(float(np.mean(rng.normal(size=100_000) >= threshold.value)))
    assert min(lower) > 0 and np.mean(rates) <= 1.3 * TARGET


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


# -- incidents in the training rows (contamination) --------------------------------------------

CONTAMINATION = TrainConfig().contamination


def contaminated(rng, n: int, incidents: int, height: float = 15.0) -> np.ndarray:
    """``n`` exponential held-back scores (window 1) with ``incidents`` of them lifted."""
    scores = rng.exponential(size=n)
    scores[rng.choice(n, incidents, replace=False)] += height
    return scores


def test_stretch_peaks_are_one_per_stretch_highest_first():
    scores = np.array([0.0, 5.0, 4.9, 0.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0, 6.0])
    assert stretch_peaks(scores, 3, 10).tolist() == [6.0, 5.0, 3.0]  # every row within 2 of one
    assert stretch_peaks(scores, 1, 3).tolist() == [6.0, 5.0, 4.9]
    assert stretch_peaks(scores, 3, 1).tolist() == [6.0]


def test_incidents_in_the_held_back_windows_are_set_aside_and_the_target_holds():
    """A few held-back stretches hold incidents: the threshold without contamination lies above
    them and misses them; with it, it lies below them and fresh normal scores exceed it about
    as often as the target says."""
    rng = np.random.default_rng(5)
    rates, caught, missed = [], 0, 0
    for _ in range(200):
        held, fitted = contaminated(rng, 500, 10), rng.exponential(size=1500)
        plain = fit_threshold(held, 1, TARGET, fit_scores=fitted)
        robust = fit_threshold(held, 1, TARGET, contamination=CONTAMINATION, fit_scores=fitted)
        missed += plain.value > 15.0
        caught += robust.value < 15.0
        rates.append(float(np.mean(rng.exponential(size=20_000) >= robust.value)))
        assert robust.false_alarm_target <= TARGET * (1 + 1e-9)  # lower where the floor binds
        assert "50 set aside as possible incidents" in robust.rule
    assert missed == 200 and caught == 200
    assert TARGET / 3 <= np.mean(rates) <= 2 * TARGET


def test_on_clean_data_setting_aside_keeps_the_promise():
    rng = np.random.default_rng(6)
    plain, robust = [], []
    for _ in range(200):
        held, fitted, fresh = (rng.exponential(size=n) for n in (1000, 3000, 20_000))
        plain.append(np.mean(fresh >= fit_threshold(held, 1, TARGET).value))
        robust.append(np.mean(fresh >= fit_threshold(held, 1, TARGET, contamination=CONTAMINATION,
                                                     fit_scores=fitted).value))
    assert np.mean(robust) <= 1.3 * TARGET and np.mean(robust) <= 1.3 * np.mean(plain)


def test_peaks_that_recur_in_the_fitted_windows_are_not_set_aside():
    """A noise-free daily cycle whose hardest hour scores high once a day: the held-back days
    are few, so the set-aside peaks would be those hours; the fitted days score them too, so the
    threshold stays above them."""
    day = np.concatenate([np.zeros(40), [5.0], np.zeros(7)]) + np.linspace(0, 1, 48)
    held, fitted = np.tile(day, 3), np.tile(day, 10)
    threshold = fit_threshold(held, 4, TARGET, contamination=0.2, fit_scores=fitted)
    set_aside = int(0.2 * stretches(len(held), 4))  # the tail is fitted without their peaks
    assert threshold.value >= fitted.max() + FLOOR_STEP * tail_scale(held, 4, set_aside)
    assert not np.any(np.tile(day, 30) >= threshold.value)
    alone = fit_threshold(held, 4, TARGET, contamination=0.2, fit_scores=np.zeros(10))
    assert alone.value < 5.0  # without the fitted days, the hardest hours would be set aside
    once = fit_threshold(held, 4, TARGET, contamination=0.2, fit_scores=fitted[:60])
    assert once.value < 5.0  # one fitted day: its hardest hour may be an incident


def test_one_incident_in_the_fitted_windows_does_not_hold_the_threshold_up():
    """Orion's protocol fits on incidents too: the fitted rows' single highest peak is let go, so a
    held-back incident below it is still flagged; a second fitted peak as high is normal."""
    rng = np.random.default_rng(11)
    held = rng.exponential(size=2000)
    held[1000:1004] += 12.0  # a held-back incident
    fitted = rng.exponential(size=6000)
    fitted[3000:3004] += 16.0  # a fitted-rows incident, higher
    threshold = fit_threshold(held, 32, TARGET, contamination=0.1, fit_scores=fitted)
    assert fitted[3000:3004].max() > held[1000:1004].max() >= threshold.value
    assert threshold.value > fit_floor(fitted, 32)
    assert "above all but the highest fitted stretch" in threshold.rule
    twice = fitted.copy()
    twice[5000:5004] += 16.0  # the same peak again: normal, so nothing is set aside
    again = fit_threshold(held, 32, TARGET, contamination=0.1, fit_scores=twice)
    assert "set aside" not in again.rule and again.value > held.max()


def test_with_fewer_stretches_than_one_over_the_share_nothing_is_set_aside():
    rng = np.random.default_rng(7)
    held = contaminated(rng, 300, 2)  # window 32: 10 stretches, 0.1 x 10 = 1 may be set aside
    fitted = rng.exponential(size=900)
    few = held[:9 * 32]  # 9 stretches: none
    assert (fit_threshold(few, 32, TARGET, contamination=0.1, fit_scores=fitted)
            == fit_threshold(few, 32, TARGET))
    assert fit_threshold(held, 32, TARGET, contamination=0.0, fit_scores=fitted) == \
        fit_threshold(held, 32, TARGET)
    assert fit_threshold(held, 32, TARGET, contamination=0.1).value == \
        fit_threshold(held, 32, TARGET).value  # no fitted scores: no floor, nothing set aside


def test_training_sets_incidents_aside_by_default_and_contamination_0_turns_it_off():
    """The trainer hands the fitted windows' scores to the rule: a series whose held-back rows
    hold a burst the fitted rows never show gets a threshold below the burst's peak."""
    rng = np.random.default_rng(8)
    n = 3000
    values = np.sin(np.arange(n) / 5)[:, None] + 0.05 * rng.normal(size=(n, 1))
    values[2700:2720, 0] += 3.0 * rng.normal(size=20)  # a noise burst in the held-back quarter
    ts = 1000 * np.arange(n, dtype=np.int64)
    common = dict(model="lstm-ae", window=16, epochs=2, hidden=8, latent=4, seed=0,
                  sample_budget=4000)
    default = train(ts, values, ["x"], TrainConfig(**common))
    off = train(ts, values, ["x"], TrainConfig(**common, contamination=0.0))
    assert default.threshold.value < off.threshold.value
    assert "set aside as possible incidents" in default.threshold.rule
    assert "set aside" not in off.threshold.rule
    assert default.threshold.value > default.train_scores.max()
    assert default.calib_scores.max() >= default.threshold.value  # the burst is flagged
    assert off.calib_scores.max() < off.threshold.value  # and without it, it is not


def _constant_parts(n: int, critic: float, msq: float = 6.7e-5) -> Parts:
    ones = np.ones((n, 1))
    return Parts(32, msq * ones, 1e-3 * ones, 2 * msq * ones, np.log(1e-3) * ones,
                 np.full(n, critic))


def test_on_a_constant_signal_float_rounding_raises_no_alarm():
    """A flat line reconstructs to the same float32 outputs up to rounding (a different batch size
    takes another kernel): a few ulps of the critic or the error must not cross the threshold,
    while a real departure still does."""
    critic = float(np.float32(-1.9625547))
    held, fitted = _constant_parts(200, critic), _constant_parts(600, critic)
    score, threshold, _, _ = calibrate_parts(fitted, held, TrainConfig(), 1)
    ulps = float(np.spacing(np.float32(critic)))
    rounded = Parts(32, held.msq[:2] * (1 + 4e-7), held.mres[:2], held.peak[:2],
                    held.variation[:2], held.critic[:2] + np.array([4 * ulps, -4 * ulps]))
    assert not threshold.is_anomaly(score.score(rounded).scores).any()
    moved = _constant_parts(1, critic + 0.05)
    assert threshold.is_anomaly(score.score(moved).scores).all()
