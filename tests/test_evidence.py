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
