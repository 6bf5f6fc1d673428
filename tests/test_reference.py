"""The benchmark's reference detectors: their limits and what they flag, on synthetic data."""

import math
from statistics import NormalDist

import numpy as np
import pytest

from bench.reference import (PcaReference, betainc, f_quantile, q_limit, rolling_z,
                             rolling_z_flags, t2_limit)


def test_incomplete_beta_matches_closed_forms():
    # I_x(1, b) = 1 - (1-x)^b and I_x(a, 1) = x^a
    for x in (0.01, 0.3, 0.7, 0.99):
        assert betainc(1.0, 3.0, x) == pytest.approx(1 - (1 - x) ** 3, rel=1e-10)
        assert betainc(2.5, 1.0, x) == pytest.approx(x ** 2.5, rel=1e-10)


def test_f_quantile_matches_table_values():
    assert f_quantile(0.99, 5, 100) == pytest.approx(3.2059, abs=1e-3)  # F table
    assert f_quantile(0.95, 1, 10) == pytest.approx(4.9646, abs=1e-3)
    # F(1, d2) is t(d2)^2; with d2 large it tends to the chi-square(1) = z^2 quantile
    z = NormalDist().inv_cdf(0.995)
    assert f_quantile(0.99, 1, 100_000) == pytest.approx(z * z, rel=1e-3)


def test_t2_limit_grows_with_components_and_falls_with_rows():
    assert t2_limit(5, 500) < t2_limit(10, 500)
    assert t2_limit(5, 100) > t2_limit(5, 1000)


def test_q_limit_of_one_residual_eigenvalue_is_its_chi_square_quantile():
    # one discarded component: Q = lambda * chi2(1); Jackson-Mudholkar is an approximation
    z = NormalDist().inv_cdf(0.995)
    assert q_limit(np.array([2.0])) == pytest.approx(2.0 * z * z, rel=0.15)
    assert q_limit(np.array([0.0, 0.0])) == 0.0


MIX = np.random.default_rng(99).normal(size=(2, 6))  # one fixed correlation structure


def _correlated(rng, n):
    return rng.normal(size=(n, 2)) @ MIX + 0.1 * rng.normal(size=(n, MIX.shape[1]))


def test_limits_give_about_one_percent_false_alarms_on_gaussian_rows():
    pca = PcaReference.fit(_correlated(np.random.default_rng(0), 5000))
    fresh = pca.flags(_correlated(np.random.default_rng(1), 20_000))
    for name in ("pca-t2", "pca-q"):
        assert 0.004 < fresh[name].mean() < 0.02, name


def test_t2_flags_a_large_shift_and_q_flags_a_correlation_break():
    rng = np.random.default_rng(2)
    train = _correlated(rng, 2000)
    pca = PcaReference.fit(train)
    assert pca.components == 2  # two latent factors carry > 90 % of the variance
    test = _correlated(np.random.default_rng(3), 400)
    shifted = test.copy()
    shifted[:200] += 8.0 * train.std(axis=0) * pca.loadings[:, 0] / np.abs(pca.loadings[:, 0]).max()
    broken = test.copy()
    broken[200:, 0] = -broken[200:, 0]  # channel 0 now moves against the others
    shift, normal = pca.flags(shifted[:200]), pca.flags(test[:200])
    assert shift["pca-t2"].mean() > 0.9 and normal["pca-t2"].mean() < 0.05
    assert pca.flags(broken[200:])["pca-q"].mean() > 0.6  # rows where channel 0 is near 0 pass
    assert pca.flags(test[200:])["pca-q"].mean() < 0.05


def test_constant_channel_does_not_break_the_fit():
    rng = np.random.default_rng(4)
    train = np.column_stack([_correlated(rng, 500), np.full(500, 3.0)])
    pca = PcaReference.fit(train)
    t2, q = pca.score(train)
    assert np.isfinite(t2).all() and np.isfinite(q).all()


def test_rolling_z_flags_a_spike_and_is_causal():
    rng = np.random.default_rng(5)
    x = rng.normal(size=1000)
    x[600] = 12.0
    flags = rolling_z_flags(x, window=288, sigmas=4.0)
    assert flags[600] == 1
    assert flags[:288].sum() == 0  # no complete trailing window yet
    assert flags.sum() <= 3
    z = rolling_z(x, 288)
    changed = x.copy()
    changed[700:] += 50.0  # the future must not change the past
    np.testing.assert_array_equal(rolling_z(changed, 288)[:700], z[:700])
    assert rolling_z(changed, 288)[700] > 4.0


def test_rolling_z_matches_a_direct_computation():
    x = np.random.default_rng(6).normal(size=50).cumsum()
    z = rolling_z(x, 10)
    for t in (10, 25, 49):
        past = x[t - 10:t]
        assert z[t] == pytest.approx(abs(x[t] - past.mean()) / past.std(ddof=1))
    assert math.isnan(z[9])


def test_rolling_z_of_a_flat_stretch_flags_only_a_change():
    x = np.r_[np.full(300, 5.0), 5.0, 6.0]
    z = rolling_z(x, 288)
    assert z[300] == 0.0 and z[301] == np.inf
