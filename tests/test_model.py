"""Detector conformance (River's checks): shapes, determinism, batch invariance, artifact round trip
and strict refusal of bad artifacts; scaler and calibration basics."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from detector.artifact import ArtifactError, load_artifact
from detector.term import ErrorTerm, NoiseTerm, Parts, WindowScore
from detector.scaler import StandardScaler
from training.trainer import TrainConfig, slow_channels, train

CHANNELS = ["flow", "pressure", "temp"]


def normal_data(n=400, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    load = np.sin(2 * np.pi * t / 4)  # a fast cycle (pump strokes): not a slow channel
    values = np.stack([
        10 + 2 * load + 0.3 * rng.normal(size=n),
        5 - load + 0.2 * rng.normal(size=n),
        60 + 0.01 * t + 0.05 * rng.normal(size=n),  # slow, drifting channel
    ], axis=1)
    return 1000 * t.astype(np.int64), values


@pytest.fixture(scope="module", params=["lstm-gan", "lstm-ae"])
def trained(request, tmp_path_factory):
    ts, values = normal_data()
    config = TrainConfig(model=request.param, window=12, epochs=3, hidden=16, latent=8, seed=3)
    result = train(ts, values, CHANNELS, config)
    out = tmp_path_factory.mktemp(request.param)
    result.save(out)
    return out, result, config


def windows_of(values, w):
    return np.stack([values[i - w + 1 : i + 1] for i in range(w - 1, len(values))])


def test_scores_have_one_finite_value_per_window(trained):
    out, _, config = trained
    det = load_artifact(out, device="cpu").detector
    _, values = normal_data(200, seed=1)
    batch = det.score(windows_of(values, config.window))
    assert batch.scores.shape == (200 - config.window + 1,)
    assert batch.scores.dtype == np.float64 and np.isfinite(batch.scores).all()
    assert batch.contributions.shape == (len(batch.scores), len(CHANNELS))
    np.testing.assert_allclose(batch.contributions.sum(axis=1), 1.0, rtol=1e-9)


def test_a_window_scores_the_same_alone_or_in_any_batch(trained):
    out, _, config = trained
    det = load_artifact(out, device="cpu").detector
    _, values = normal_data(300, seed=2)
    w = windows_of(values, config.window)
    whole = det.score(w)
    together = whole.scores
    alone = np.array([det.score(w[i : i + 1]).scores[0] for i in range(0, len(w), 17)])
    np.testing.assert_allclose(alone, together[::17], rtol=0, atol=1e-5)
    shuffled = np.random.default_rng(0).permutation(len(w))
    np.testing.assert_allclose(det.score(w[shuffled]).scores, together[shuffled], atol=1e-5)
    assert det.chunk == 512 and len(w) < 512  # the CPU default; one pass here
    det.chunk = 7  # passes of 7 windows change nothing either
    chunked = det.score(w)
    np.testing.assert_allclose(chunked.scores, together, atol=1e-5)
    np.testing.assert_allclose(chunked.contributions, whole.contributions, atol=1e-6)


def test_round_trip_reproduces_scores_and_metadata(trained, tmp_path):
    out, result, config = trained
    loaded = load_artifact(out, device="cpu")
    assert loaded.detector.channels == CHANNELS and loaded.detector.window == config.window
    assert loaded.threshold.value == pytest.approx(result.threshold.value)
    meta = json.loads((out / "model.json").read_text())
    assert meta["model_version"].startswith(config.model)
    for key in ("scaler", "score_normaliser", "threshold", "network", "format_version"):
        assert key in meta
    _, values = normal_data(100, seed=4)
    w = windows_of(values, config.window)
    again = load_artifact(out, device="cpu").detector.score(w).scores
    np.testing.assert_array_equal(loaded.detector.score(w).scores, again)


def test_loaded_artifact_scores_like_the_trained_detector(trained):
    """Everything scoring depends on (slow channels, input centring) travels in the artifact."""
    out, result, config = trained
    assert result.spec.slow.any(), "the fixture must exercise a slow channel"
    fresh = result.detector("mem", device="cpu")
    loaded = load_artifact(out, device="cpu").detector
    np.testing.assert_array_equal(loaded.spec.slow, result.spec.slow)
    _, values = normal_data(150, seed=5)
    values[100:, 2] += 3.0  # a level shift on the slow channel
    w = windows_of(values, config.window)
    np.testing.assert_allclose(loaded.score(w).scores, fresh.score(w).scores, rtol=0, atol=1e-6)


def test_a_stuck_channel_scores_high_and_is_named(trained):
    out, _, config = trained
    loaded = load_artifact(out, device="cpu")
    _, values = normal_data(200, seed=6)
    w = windows_of(values, config.window)
    normal = loaded.detector.score(w)
    stuck = w.copy()
    stuck[:, :, 0] = stuck[:, :1, 0]  # flow holds its first value for the whole window
    batch = loaded.detector.score(stuck)
    assert batch.scores.min() > max(normal.scores.max(), loaded.threshold.value)
    assert (batch.contributions.argmax(axis=1) == 0).all()


def test_score_round_trips_and_reads_artifacts_without_a_flat_term(trained):
    out, result, _ = trained
    n = result.spec.score
    assert len(n.flat.floor) == len(CHANNELS)
    assert WindowScore.from_dict(json.loads(json.dumps(n.to_dict()))) == n
    legacy = {k: v for k, v in n.to_dict().items() if not k.startswith("flat_")}
    assert WindowScore.from_dict(legacy).flat is None
    with pytest.raises(ValueError, match="positive"):
        WindowScore.from_dict({**n.to_dict(), "flat_scale": [0.0] * len(CHANNELS)})
    with pytest.raises(ValueError, match="unknown fields"):
        WindowScore.from_dict({**n.to_dict(), "surprise": 1.0})


def test_channel_errors_count_relative_to_their_held_back_median(trained):
    """Calibration stores each channel's median held-back error; the score divides by it, so the
    held-back windows' mean relative error is about one per channel and no channel dominates."""
    out, result, config = trained
    n = result.spec.score.error
    detector = load_artifact(out, device="cpu").detector
    assert len(n.channel_scale) == len(CHANNELS) and min(n.channel_scale) > 0
    parts = detector.parts(windows_of(normal_data(400, seed=0)[1][300:], config.window))
    rec, rel = n.error(parts), n.relative(parts)
    np.testing.assert_allclose(rel, rec / np.asarray(n.channel_scale))
    np.testing.assert_allclose(np.median(rel, axis=0), 1.0, rtol=0.1)  # about the same windows
    # without the scale (an artifact from before it existed) the raw errors count
    data = {k: v for k, v in result.spec.score.to_dict().items() if k != "channel_scale"}
    plain = WindowScore.from_dict(data).error
    assert plain.channel_scale == ()
    np.testing.assert_array_equal(plain.relative(parts), rec)
    with pytest.raises(ValueError, match="positive"):
        WindowScore.from_dict({**data, "channel_scale": [0.0] * len(CHANNELS)})


def test_a_scale_per_channel_or_none_at_all(trained):
    _, result, _ = trained
    score = result.spec.score
    wrong = dataclasses.replace(score, error=dataclasses.replace(score.error, channel_scale=(1.0,)))
    with pytest.raises(ValueError, match="one value per channel"):
        dataclasses.replace(result.spec, score=wrong)


def test_channel_norm_off_scores_raw_errors():
    ts, values = normal_data(200)
    config = TrainConfig(window=8, epochs=1, hidden=8, latent=4, channel_norm=False)
    assert train(ts, values, CHANNELS, config).spec.score.error.channel_scale == ()


def test_error_weighs_sustained_offsets_by_the_window_length():
    w = 16
    offset = np.full((1, w, 2), 0.5)
    offset[0, :, 1] = [0.5, -0.5] * (w // 2)  # same energy, no sustained offset
    parts = Parts(w, (offset**2).mean(axis=1), offset.mean(axis=1), (offset**2).max(axis=1),
                  np.zeros((1, 2)), None)
    plain, weighted = ErrorTerm(0.0, 1.0).error(parts), ErrorTerm(0.0, 1.0, (), 1.0).error(parts)
    np.testing.assert_allclose(plain, [[0.25, 0.25]])
    np.testing.assert_allclose(weighted, [[0.25 + w * 0.25, 0.25]])


def test_cpu_training_is_reproducible_with_a_seed():
    ts, values = normal_data(200)
    config = TrainConfig(window=8, epochs=2, hidden=8, latent=4, seed=11)
    a, b = train(ts, values, CHANNELS, config), train(ts, values, CHANNELS, config)
    for (ka, va), (kb, vb) in zip(a.networks.state_dict().items(), b.networks.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert a.threshold.value == b.threshold.value


def test_epoch_plan_takes_larger_batches_only_where_the_budget_cuts_epochs():
    from training.trainer import epoch_plan

    config = TrainConfig()  # 15 epochs, 40,000 windows
    assert epoch_plan(369, config) == (15, 369, config.batch_size)  # a SKAB file: every epoch
    assert epoch_plan(2666, config) == (15, 2666, config.batch_size)  # 39,990 windows: still all
    assert epoch_plan(2667, config) == (14, 2667, config.long_batch_size)  # the budget cuts
    assert epoch_plan(60_000, config) == (1, 40_000, config.long_batch_size)
    assert config.long_batch_size > config.batch_size
    mine = TrainConfig(batch_size=16, long_batch_size=16)  # what --batch-size 16 makes
    assert epoch_plan(60_000, mine)[2] == epoch_plan(369, mine)[2] == 16


def test_a_long_history_trains_in_long_batches_and_says_so_in_its_metrics(monkeypatch):
    import training.trainer as trainer

    sizes = []
    real = trainer.generator_step

    def generator_step(nets, x, *args, **kwargs):
        sizes.append(len(x))
        return real(nets, x, *args, **kwargs)

    monkeypatch.setattr(trainer, "generator_step", generator_step)
    ts, values = normal_data(300)
    config = TrainConfig(window=8, epochs=4, hidden=8, latent=4, sample_budget=400,
                         batch_size=8, long_batch_size=24)  # ~217 fit windows: 1 epoch of 4
    result = train(ts, values, CHANNELS, config)
    assert result.metrics["epochs"] == 1 and result.metrics["batch_size"] == 24
    assert max(sizes) == 24 and len(sizes) == -(-result.metrics["windows_per_epoch"] // 24)


def test_torch_threads_hold_through_calibration_and_are_restored(monkeypatch):
    import training.trainer as trainer

    seen = []
    real = trainer.calibrate

    def calibrate(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "calibrate", calibrate)
    ts, values = normal_data(200)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        train(ts, values, CHANNELS, TrainConfig(window=8, epochs=1, hidden=8, latent=4,
                                                torch_threads=1))
        assert seen == [1]  # calibration scores with the threads training was given
        assert torch.get_num_threads() == 2  # and the caller's setting comes back
    finally:
        torch.set_num_threads(before)


def copy_artifact(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_refuses_missing_and_unexpected_tensors(trained, tmp_path):
    out, result, _ = trained
    bad = copy_artifact(out, tmp_path / "bad")
    tensors = {k: v.contiguous() for k, v in result.networks.state_dict().items()}
    missing = dict(tensors)
    missing.pop(next(iter(missing)))
    save_file(missing, str(bad / "model.safetensors"))
    with pytest.raises(ArtifactError, match="missing"):
        load_artifact(bad, device="cpu")
    save_file({**tensors, "extra.weight": torch.zeros(2)}, str(bad / "model.safetensors"))
    with pytest.raises(ArtifactError, match="unexpected"):
        load_artifact(bad, device="cpu")


def test_refuses_mis_shaped_tensors(trained, tmp_path):
    out, result, _ = trained
    bad = copy_artifact(out, tmp_path / "bad")
    tensors = {k: v.contiguous() for k, v in result.networks.state_dict().items()}
    name = "encoder.head.weight"
    tensors[name] = torch.zeros(tensors[name].shape[0] + 1, tensors[name].shape[1])
    save_file(tensors, str(bad / "model.safetensors"))
    with pytest.raises(ArtifactError, match="shape"):
        load_artifact(bad, device="cpu")


def test_refuses_pickles_and_non_safetensors(trained, tmp_path):
    out, _, _ = trained
    bad = copy_artifact(out, tmp_path / "bad")
    (bad / "model.pt").write_bytes(b"\x80\x04K\x01.")  # a pickle
    with pytest.raises(ArtifactError, match="safetensors"):
        load_artifact(bad, device="cpu")
    (bad / "model.pt").unlink()
    (bad / "model.safetensors").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(ArtifactError, match="not a valid safetensors"):
        load_artifact(bad, device="cpu")


def test_refuses_bad_metadata(trained, tmp_path):
    out, _, _ = trained
    bad = copy_artifact(out, tmp_path / "bad")
    meta = json.loads((bad / "model.json").read_text())
    (bad / "model.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ArtifactError, match="format_version"):
        load_artifact(bad, device="cpu")
    (bad / "model.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_artifact(bad, device="cpu")
    (bad / "model.json").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        load_artifact(bad, device="cpu")
    with pytest.raises(ArtifactError, match="does not exist"):
        load_artifact(tmp_path / "nowhere", device="cpu")


def test_scaler_uses_training_rows_and_never_divides_by_zero():
    values = np.array([[1.0, 5.0], [3.0, 5.0], [5.0, 5.0]])
    scaler = StandardScaler.fit(values)
    np.testing.assert_allclose(scaler.mean, [3.0, 5.0])
    assert (scaler.scale > 0).all()
    out = scaler.transform(np.array([[3.0, 5.0]]))
    assert out.dtype == np.float32 and np.allclose(out, 0)
    again = StandardScaler.from_dict(scaler.to_dict())
    np.testing.assert_array_equal(again.scale, scaler.scale)
    with pytest.raises(ValueError):
        StandardScaler.from_dict({"kind": "standard", "mean": [0.0], "scale": [0.0]})


def test_slow_channels_are_the_smooth_drifting_ones():
    _, values = normal_data(400)
    np.testing.assert_array_equal(slow_channels(values, 0.7), [False, False, True])


def per_channel_term(trained, name: str, seed: int):
    """The trained score with its ``name`` term checked (one ceiling and positive scale per
    channel, loaded back unchanged), the loaded artifact, fresh normal rows and their windows."""
    out, result, config = trained
    n = result.spec.score
    term = getattr(n, name)
    assert len(term.ceiling) == len(term.scale) == len(CHANNELS) and min(term.scale) > 0
    loaded = load_artifact(out, device="cpu")
    assert loaded.detector.spec.score == n
    _, values = normal_data(200, seed=seed)
    return n, loaded, values, windows_of(values, config.window)


def test_a_short_spike_scores_high_and_is_named(trained):
    """A few rows far off on one channel: the window's mean error dilutes them, the peak term
    (largest squared row residual against the held-back ceiling) does not."""
    n, loaded, values, w = per_channel_term(trained, "peak", seed=7)
    spiked = w.copy()
    spiked[:, -3:-1, 0] += 6 * values[:, 0].std()  # two rows, +6 sd on flow
    batch = loaded.detector.score(spiked)
    assert batch.scores.min() > loaded.threshold.value
    assert (batch.contributions.argmax(axis=1) == 0).all()
    alone = np.concatenate([loaded.detector.score(spiked[i : i + 1]).scores for i in range(5)])
    np.testing.assert_allclose(alone, batch.scores[:5], rtol=0, atol=1e-5)
    # zero on the held-back windows by construction (ceiling + margin), so the threshold keeps
    # its meaning; an artifact without the peak fields scores without the term
    legacy = {k: v for k, v in n.to_dict().items() if not k.startswith("peak_")}
    assert WindowScore.from_dict(legacy).peak is None
    with pytest.raises(ValueError, match="positive"):
        WindowScore.from_dict({**n.to_dict(), "peak_scale": [0.0] * len(CHANNELS)})
    with pytest.raises(ValueError, match="one finite value per channel"):
        WindowScore.from_dict({**n.to_dict(), "peak_ceiling": [0.0]})


def test_peak_weight_zero_leaves_the_peak_term_out():
    ts, values = normal_data(200)
    config = TrainConfig(window=8, epochs=1, hidden=8, latent=4, peak_weight=0.0)
    assert train(ts, values, CHANNELS, config).spec.score.peak is None


def test_a_channel_that_turns_noisy_adds_its_noise_term_and_is_named(trained):
    """Noise on one channel: the noise term (variation over 1.2 x the roughest training window)
    adds to that channel only, zero on normal windows; the score is the other terms plus it."""
    n, loaded, _, w = per_channel_term(trained, "noise", seed=8)
    noisy = w.copy()
    noisy[:, :, 1] += 4.0 * np.random.default_rng(1).normal(size=noisy.shape[:2])  # pressure
    parts = loaded.detector.parts(noisy)
    added = n.noise.contribution(parts, np.zeros((len(w), len(CHANNELS))))
    assert (added[:, 1] > 0).all() and (added[:, [0, 2]] == 0).all()
    without = dataclasses.replace(n, noise=None).score(parts).scores
    batch = loaded.detector.score(noisy)
    np.testing.assert_allclose(batch.scores, without + added.sum(axis=1), rtol=0, atol=1e-4)
    assert (batch.contributions.argmax(axis=1) == 1).all()
    normal = loaded.detector.parts(w)
    np.testing.assert_array_equal(n.noise.contribution(normal, np.zeros((len(w), 3))), 0.0)
    legacy = {k: v for k, v in n.to_dict().items() if not k.startswith("noise_")}
    assert WindowScore.from_dict(legacy).noise is None
    assert WindowScore.from_dict(json.loads(json.dumps(n.to_dict()))) == n
    with pytest.raises(ValueError, match="positive"):
        WindowScore.from_dict({**n.to_dict(), "noise_scale": [0.0] * len(CHANNELS)})
    with pytest.raises(ValueError, match="one finite value per channel"):
        WindowScore.from_dict({**n.to_dict(), "noise_ceiling": [0.0]})


def test_noise_term_counts_only_variation_over_its_margin():
    term = NoiseTerm(ceiling=(0.0, 1.0), scale=(0.5, 0.25), weight=2.0, margin=float(np.log(1.5)))
    variation = np.array([[0.0, 1.0], [np.log(1.5), 1.0 + np.log(1.5)],
                          [np.log(1.5) + 1.0, 1.0 + np.log(1.5) + 0.5]])
    parts = Parts(4, *(np.zeros((3, 2)),) * 3, variation, None)
    np.testing.assert_allclose(term.contribution(parts, np.zeros((3, 2))),
                               [[0, 0], [0, 0], [2 * 1.0 / 0.5, 2 * 0.5 / 0.25]])


def test_noise_weight_zero_leaves_the_noise_term_out():
    ts, values = normal_data(200)
    config = TrainConfig(window=8, epochs=1, hidden=8, latent=4, noise_weight=0.0)
    score = train(ts, values, CHANNELS, config).spec.score
    assert score.noise is None and not any(k.startswith("noise_") for k in score.to_dict())
