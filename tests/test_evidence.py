"Paired differences, pooled over seeds, verdicts and minimum detectable effects (mia_pruning.evidence)."
import subprocess, sys
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from mia_pruning.evidence import (metric_value, paired_difference, pooled_paired_difference, verdict, auc_mde, auc_variance,
                                  empirical_mde)


def test_evidence_does_not_import_torch():
    r = subprocess.run([sys.executable, '-c', 'import sys, mia_pruning.evidence; print("torch" in sys.modules)'],
                       capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == 'False', r.stderr


def test_bootstrap_auc_rows_equal_sklearn_with_ties():
    rng = np.random.default_rng(0)
    m = rng.random(500) < 0.4
    s = rng.integers(0, 5, 500).astype(float) + m
    assert metric_value(s, m) == pytest.approx(roc_auc_score(m, s), abs=1e-12)


def test_paired_interval_covers_the_true_change_about_95_percent_of_the_time():
    "Coverage on a model whose true AUC change is known (two Gaussians, shift 0.2 -> 0.4 for members)."
    from scipy.stats import norm
    true = norm.cdf(0.4 / np.sqrt(2)) - norm.cdf(0.2 / np.sqrt(2))
    hits = 0
    for t in range(40):
        rng = np.random.default_rng(100 + t)
        m = np.r_[np.ones(1500, bool), np.zeros(1500, bool)]
        z = rng.normal(0, 1, len(m))
        a, b = z + 0.2 * m, z + 0.4 * m   # the same noise: a paired design
        r = paired_difference(a, b, m, n_boot=300, seed=t)
        hits += r['lo'] <= true <= r['hi']
    assert hits >= 33, hits  # 95% nominal; 33/40 is the 1% binomial lower tail


def test_pooled_over_seeds_is_wider_than_one_seed_when_seeds_disagree():
    m = np.r_[np.ones(1000, bool), np.zeros(1000, bool)]
    groups = []
    for s, shift in enumerate([0.0, 0.3, 0.6]):  # seeds that disagree about the change
        z = np.random.default_rng(s).normal(0, 1, len(m))
        groups.append((z, z + shift * m, m))
    pooled = pooled_paired_difference(groups, n_boot=500)
    one = paired_difference(*groups[1], n_boot=500)
    assert pooled['hi'] - pooled['lo'] > 2 * (one['hi'] - one['lo'])
    with pytest.raises(ValueError, match='same samples'):
        pooled_paired_difference([(np.zeros(3), np.zeros(4), [1, 0, 1])])


def test_verdicts_and_mde():
    assert verdict(0.001, 0.01)[0] == 'holds' and verdict(-0.01, 0.01)[0] == 'inconclusive'
    assert verdict(-0.01, 0.01, margin=0.02)[0] == 'does not hold'
    assert auc_mde(2250, 2250, rho=0.5, n_seeds=3) < 0.02 < auc_mde(405, 405)
    assert empirical_mde(0.005) == pytest.approx(2.8 * 0.005, rel=0.01)
    assert auc_variance(0.5, 100, 100) == pytest.approx((0.25 + 99 * (1/3 - 0.25) * 2) / 1e4)
    with pytest.raises(ValueError, match='auc must lie'): auc_mde(10, 10, auc=0.3)


def test_paired_change_delong_matches_the_bootstrap_and_sklearn():
    from mia_pruning.evidence import paired_change
    rng = np.random.default_rng(4)
    m = np.r_[np.ones(1500, bool), np.zeros(1500, bool)]
    a = rng.normal(0, 1, len(m)) + 0.2 * m
    b = 0.6 * a + 0.8 * rng.normal(0, 1, len(m)) + 0.1 * m
    pc = paired_change(a, b, m)
    assert pc['diff'] == pytest.approx(roc_auc_score(m, b) - roc_auc_score(m, a), abs=1e-12)
    assert pc['se'] == pytest.approx(paired_difference(a, b, m, n_boot=3000)['se'], rel=0.1)
    g = paired_change(a, b, m, 'gap')
    assert g['diff'] == pytest.approx((b[m].mean() - b[~m].mean()) - (a[m].mean() - a[~m].mean()))


def test_random_effects_known_answers():
    from scipy import stats
    from mia_pruning.evidence import random_effects
    y = np.array([0.00, 0.02, 0.04, 0.06])
    # equal member-level errors: the t-interval on the seeds, t with 3 dof
    r = random_effects(y, [0.005] * 4)
    half = stats.t.ppf(0.975, 3) * y.std(ddof=1) / 2
    assert (r['estimate'], r['lo'], r['hi']) == pytest.approx((0.03, 0.03 - half, 0.03 + half), abs=1e-12)
    # DerSimonian-Laird with equal errors: between-seed variance = the seeds' variance less the members' share
    assert r['tau2'] == pytest.approx(y.var(ddof=1) - 0.005 ** 2, abs=1e-15)
    assert r['dof'] == 3 and r['mde'] == pytest.approx((stats.t.ppf(0.975, 3) + stats.t.ppf(0.8, 3)) * y.std(ddof=1) / 2)
    # seeds that agree more than their member errors allow: tau^2 = 0, weights 1/se^2 (the precise seed counts most)
    r = random_effects([0.01, 0.012], [0.01, 0.02])
    assert r['tau2'] == 0 and r['estimate'] == pytest.approx((0.01 / 1e-4 + 0.012 / 4e-4) / (1 / 1e-4 + 1 / 4e-4))
    one = random_effects([0.02], [0.01])
    assert one['interval'] == 'members only (1 seed)' and one['lo'] == pytest.approx(0.02 - 1.959964 * 0.01, abs=1e-6)
    with pytest.raises(ValueError, match='value per seed'): random_effects([0.1, 0.2], [0.1])


def test_random_effects_covers_the_truth_at_3_5_10_seeds():
    "Members and seeds both random, known mean change: 95% intervals cover it within four binomial SEs of 95%."
    from mia_pruning.evidence import coverage_simulation
    sims = 400
    band = 4 * np.sqrt(0.95 * 0.05 / sims)
    for row in coverage_simulation((3, 5, 10), n_sims=sims, n=150, tau=0.015, seed=11):
        assert abs(row['coverage'] - 0.95) <= band, row


def test_holm_known_answer():
    from mia_pruning.evidence import holm
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.2, 0.01]) == pytest.approx([0.2, 0.02])
    h = holm([0.5, np.nan, 0.01])
    assert np.isnan(h[1]) and h[[0, 2]] == pytest.approx([0.5, 0.02])


def test_each_verdict_label_reached():
    from mia_pruning.evidence import verdict_label, LABELS
    cases = {(0.03, 0.05): 'raised', (0.005, 0.05): 'raised', (0.005, 0.015): 'raised, below the margin',
             (-0.01, 0.015): 'no change within the margin', (-0.015, -0.005): 'lowered, below the margin',
             (-0.05, -0.01): 'lowered', (-0.01, 0.03): 'inconclusive', (-0.03, 0.01): 'inconclusive'}
    got = {k: verdict_label(*k, margin=0.02)[0] for k in cases}
    assert got == cases
    assert verdict_label(0.03, 0.05, 0.02, not_tested='collapsed')[0] == 'not tested'
    assert set(cases.values()) | {'not tested'} == set(LABELS)
    with pytest.raises(ValueError, match='lo <= hi'): verdict_label(0.1, 0.0, 0.02)
