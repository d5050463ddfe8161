"Metrics that know their resolution (fpr_floor, small classes) and the empirical-epsilon lower bound."
import time
import numpy as np
import pytest
from mia_pruning.metrics import (FPR_TARGETS, MIN_CLASS_SIDE, empirical_epsilon, fpr_floor, membership_metrics,
                                 per_class_metrics, plot_roc, resolvable_targets)


def test_tpr_below_the_floor_is_nan():
    rng = np.random.default_rng(0)
    for n_out, expect in [(99, [True, True, True]), (100, [False, True, True]), (1000, [False, False, True]),
                          (10_000, [False, False, False])]:
        m = np.r_[np.ones(500, bool), np.zeros(n_out, bool)]
        s = rng.normal(size=len(m)) + m
        met = membership_metrics(s, m, n_boot=20)
        assert met['fpr_floor'] == 1 / n_out
        assert [bool(np.isnan(met[k])) for k in FPR_TARGETS] == expect, n_out
        for k, nan in zip(FPR_TARGETS, expect):
            assert np.isnan(met[f'{k}_lo']) == nan and np.isnan(met[f'{k}_hi']) == nan
    assert resolvable_targets(1000) == {'tpr_at_1pct_fpr': True, 'tpr_at_0_1pct_fpr': True, 'tpr_at_0_01pct_fpr': False}
    with pytest.raises(ValueError): fpr_floor(0)
    # a known answer at the floor: 1,000 non-members, every member above all but the top non-member
    m = np.r_[np.ones(10, bool), np.zeros(1000, bool)]
    s = np.r_[np.full(10, 5.0), 10.0, np.zeros(999)]
    met = membership_metrics(s, m)
    assert met['tpr_at_0_1pct_fpr'] == 1.0 and np.isnan(met['tpr_at_0_01pct_fpr'])


def test_per_class_small_classes_are_nan_with_a_reason():
    rng = np.random.default_rng(1)
    lab = np.r_[np.zeros(400, int), np.ones(30, int), np.full(60, 2)]
    m = np.r_[np.arange(400) < 200, np.arange(30) < 25, np.arange(60) < 30]  # class 1: 25 members, 5 non-members
    s = rng.normal(size=len(m)) + 2 * m
    pc = per_class_metrics(s, m, lab)
    assert MIN_CLASS_SIDE == 20 and np.isnan(pc.loc[1, 'auc']) and '5 non-members' in pc.loc[1, 'note']
    assert not np.isnan(pc.loc[[0, 2], 'auc']).any() and (pc.loc[[0, 2], 'note'] == '').all()
    assert not np.isnan(per_class_metrics(s, m, lab, min_side=5).loc[1, 'auc'])
    assert membership_metrics(s, m, labels=lab)['n_classes_scored'] == 2
    with pytest.raises(ValueError, match='min_side'): per_class_metrics(s, m, lab, min_side=0)


def test_plot_roc_never_draws_below_the_floor():
    rng = np.random.default_rng(2)
    m = np.r_[np.ones(300, bool), np.zeros(405, bool)]
    fig = plot_roc({'a': (rng.normal(size=705) + m, m)})
    xs = np.concatenate([l.get_xdata() for l in fig.axes[0].lines if l.get_label().startswith('a ')])
    assert xs.min() >= 1 / 405 * (1 - 1e-12)
    assert 'n/a' in [l.get_label() for l in fig.axes[0].lines if l.get_label().startswith('a ')][0]


def _rr(eps, n, rng):
    p = np.exp(eps) / (1 + np.exp(eps))
    return np.r_[rng.random(n) < p, rng.random(n) < 1 - p].astype(float), np.r_[np.ones(n, bool), np.zeros(n, bool)]


@pytest.mark.parametrize('eps', [0.5, 1.0, 2.0])
def test_empirical_epsilon_randomized_response(eps):
    "Randomized response with a known epsilon: the bound never exceeds it and is within 0.1 at n = 100,000 per side."
    rng = np.random.default_rng(int(eps * 10))
    s, m = _rr(eps, 100_000, rng)
    t = time.time(); e = empirical_epsilon(s, m); took = time.time() - t
    assert e['epsilon'] <= eps and e['epsilon'] > eps - 0.1, e
    assert e['threshold'] == 1.0 and took < 1.0
    assert e['fpr_hi'] >= e['fpr'] and e['fnr_hi'] >= e['fnr']  # conservative: upper bounds of both error rates


def test_empirical_epsilon_laplace_and_edge_cases():
    rng = np.random.default_rng(3)
    n, m = 100_000, np.r_[np.ones(100_000, bool), np.zeros(100_000, bool)]
    for eps in [1.0, 2.0]:
        s = np.r_[1 + rng.laplace(0, 1 / eps, n), rng.laplace(0, 1 / eps, n)]  # Laplace mechanism, sensitivity 1
        t = time.time(); e = empirical_epsilon(s, m); took = time.time() - t
        assert eps - 0.1 < e['epsilon'] <= eps and took < 1.0, (eps, e, took)
    # no signal: near zero; delta lowers the bound; fewer samples give a looser (lower) bound
    null = empirical_epsilon(rng.normal(size=20_000), np.arange(20_000) < 10_000)
    assert 0 <= null['epsilon'] < 0.1
    s, mm = _rr(1.0, 20_000, rng)
    assert empirical_epsilon(s, mm, delta=0.1)['epsilon'] < empirical_epsilon(s, mm)['epsilon']
    assert empirical_epsilon(s[::10], mm[::10])['epsilon'] < empirical_epsilon(s, mm)['epsilon']
    # perfect separation at n per side: epsilon is large but finite (bounded by the sample size)
    sep = empirical_epsilon(np.r_[np.ones(1000), np.zeros(1000)], np.r_[np.ones(1000, bool), np.zeros(1000, bool)])
    assert 4 < sep['epsilon'] < 8
    # the uncorrected heuristic (every cut, no Bonferroni) is never below the corrected bound
    lap = np.r_[1 + rng.laplace(0, 1, 5000), rng.laplace(0, 1, 5000)]
    lm = np.r_[np.ones(5000, bool), np.zeros(5000, bool)]
    assert empirical_epsilon(lap, lm, grid=0)['epsilon'] >= empirical_epsilon(lap, lm)['epsilon']
    for bad, msg in [(dict(delta=1.0), 'delta'), (dict(alpha=0.0), 'alpha'), (dict(grid=-1), 'grid')]:
        with pytest.raises(ValueError, match=msg): empirical_epsilon(lap, lm, **bad)
