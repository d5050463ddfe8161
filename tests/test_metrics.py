"Tests of mia_pruning.metrics against scikit-learn and the study's reference threshold search."
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from mia_pruning.metrics import (fit_threshold, fit_threshold_reference, membership_metrics, per_class_metrics,
                                 roc_curve_points, plot_roc, FPR_TARGETS)


def _tied_data(seed, n, decimals, shift=0.3, p_member=0.5):
    "Scores with many ties (rounded normals), members shifted up."
    rng = np.random.default_rng(seed)
    mem = rng.random(n) < p_member
    return np.round(rng.normal(size=n) + shift * mem, decimals), mem


DATASETS = [(seed, n, dec, p) for seed, (n, dec, p) in enumerate(
    [(50, 1, 0.5), (500, 0, 0.3), (2_000, 1, 0.5), (5_000, 2, 0.7), (20_000, 3, 0.5), (20_000, 6, 0.1)])]


@pytest.mark.parametrize('seed,n,dec,p', DATASETS)
def test_auc_and_roc_match_sklearn(seed, n, dec, p):
    s, m = _tied_data(seed, n, dec, p_member=p)
    met = membership_metrics(s, m)
    assert abs(met['auc'] - roc_auc_score(m, s)) < 1e-9
    fpr_sk, tpr_sk, _ = roc_curve(m, s, drop_intermediate=False)
    fpr, tpr = roc_curve_points(s, m)
    np.testing.assert_allclose(fpr, fpr_sk, rtol=0, atol=1e-15)
    np.testing.assert_allclose(tpr, tpr_sk, rtol=0, atol=1e-15)
    assert met['fpr_floor'] == 1 / (~m).sum()
    for key, target in FPR_TARGETS.items():
        if target >= 1 / (~m).sum(): assert met[key] == pytest.approx(tpr_sk[fpr_sk <= target].max(), abs=1e-12), key
        else: assert np.isnan(met[key]), key  # finer than one false positive: not a number
    adv = np.max(tpr_sk - fpr_sk)
    assert met['advantage'] == pytest.approx(adv, abs=1e-12)
    assert met['best_acc'] == pytest.approx(0.5 * (1 + adv), abs=1e-12)
    assert (met['n_members'], met['n_nonmembers']) == (int(m.sum()), int((~m).sum()))


def test_auc_matches_sklearn_continuous_and_float32():
    rng = np.random.default_rng(11)
    m = rng.random(3_000) < 0.5
    s = (rng.standard_t(3, size=3_000) + 0.2 * m).astype(np.float32)
    assert abs(membership_metrics(s, m)['auc'] - roc_auc_score(m, s)) < 1e-9


def test_attack_decisions():
    s = np.array([0.9, 0.8, 0.7, 0.2, 0.1, 0.05])
    m = np.array([1, 1, 1, 0, 0, 0], bool)
    d = np.array([1, 1, 0, 1, 0, 0], bool)  # TPR 2/3, FPR 1/3
    met = membership_metrics(s, m, decisions=d)
    assert met['attack_tpr'] == pytest.approx(2 / 3) and met['attack_fpr'] == pytest.approx(1 / 3)
    assert met['attack_acc'] == pytest.approx(2 / 3)
    assert met['auc'] == 1.0 and met['fpr_floor'] == pytest.approx(1 / 3)
    assert all(np.isnan(met[k]) for k in FPR_TARGETS)  # 3 non-members cannot resolve an FPR of 1% or finer
    assert 'attack_acc' not in membership_metrics(s, m)


@pytest.mark.parametrize('seed', range(6))
def test_fit_threshold_matches_reference(seed):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(20, 600))
    m = rng.random(n) < rng.uniform(0.2, 0.8)
    if m.all() or not m.any(): m[0] = not m[0]
    # odd seeds: heavily tied integer values; even seeds: continuous values
    v = (rng.integers(0, 5, n) if seed % 2 else rng.normal(size=n)) + rng.uniform(-1, 1.5) * m
    tau, acc = fit_threshold(v, m)
    _, acc_ref = fit_threshold_reference(v, m)
    assert acc == pytest.approx(acc_ref, abs=1e-12)
    pred = v >= tau  # the returned tau really reaches the returned accuracy
    assert 0.5 * (pred[m].mean() + (~pred[~m]).mean()) == pytest.approx(acc, abs=1e-12)
    # and it equals the optimistic best_acc of the metrics (same scores, same definition)
    assert membership_metrics(v, m)['best_acc'] == pytest.approx(acc, abs=1e-12)


def test_fit_threshold_brute_force_over_all_cuts():
    "No threshold, including between values and beyond the extremes, beats the fitted one."
    rng = np.random.default_rng(5)
    v = rng.integers(0, 8, 200).astype(float)
    m = rng.random(200) < 0.5
    v = v + 2 * m
    _, acc = fit_threshold(v, m)
    u = np.unique(v)
    cuts = np.r_[u[0] - 1, u, (u[1:] + u[:-1]) / 2, u[-1] + 1]
    best = max(0.5 * ((v[m] >= t).mean() + (v[~m] < t).mean()) for t in cuts)
    assert acc == pytest.approx(best, abs=1e-12)


def test_fit_threshold_ties_fall_on_one_side():
    v = np.array([1., 2, 2, 2, 3])
    m = np.array([0, 0, 1, 1, 1], bool)
    tau, acc = fit_threshold(v, m)
    assert tau == 2.0 and acc == pytest.approx(0.5 * (1 + 0.5))  # all three 2s are members


def test_extremes():
    # all values equal: only the "everything"/"nothing" thresholds exist; both are chance
    v, m = np.full(10, 0.3), np.arange(10) < 4
    tau, acc = fit_threshold(v, m)
    assert acc == 0.5 and fit_threshold_reference(v, m)[1] == 0.5
    assert (v >= tau).all() or not (v >= tau).any()
    met = membership_metrics(v, m)
    assert met['auc'] == 0.5 and met['advantage'] == 0 and met['best_acc'] == 0.5
    assert np.isnan(met['tpr_at_1pct_fpr'])  # 6 non-members: the finest FPR step is 1/6
    met = membership_metrics(np.full(200, 0.3), np.arange(200) < 80)
    assert met['tpr_at_1pct_fpr'] == 0.0  # 120 non-members resolve 1%; the single tie step goes straight to (1, 1)
    np.testing.assert_array_equal(np.stack(roc_curve_points(v, m)), [[0, 1], [0, 1]])
    # reversed signal: `value >= tau` can do no better than calling everything (or nothing) a member
    assert fit_threshold([3., 4, 1, 2], [0, 0, 1, 1])[1] == 0.5
    assert membership_metrics([3., 4, 1, 2], [0, 0, 1, 1])['auc'] == 0.0
    # perfect separation, including a single member and a single non-member
    assert fit_threshold([0., 1], [0, 1]) == (1.0, 1.0)
    assert membership_metrics([0., 1], [0, 1])['auc'] == 1.0


def test_bootstrap_intervals():
    s, m = _tied_data(3, 3_000, 2, shift=0.6)
    d = s > 0.3
    met = membership_metrics(s, m, decisions=d, n_boot=300, seed=1)
    for key in ['auc', 'attack_acc', 'best_acc', 'tpr_at_0_1pct_fpr']:
        assert met[f'{key}_lo'] <= met[f'{key}_hi'], key
    for key in ['auc', 'attack_acc', 'best_acc']:
        assert met[f'{key}_lo'] < met[key] < met[f'{key}_hi'], key
    # the AUC's bootstrap spread agrees with its textbook standard error (Hanley & McNeil) within 25%
    a, n1, n0 = met['auc'], int(m.sum()), int((~m).sum())
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    se = np.sqrt((a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n0 - 1) * (q2 - a * a)) / (n1 * n0))
    assert (met['auc_hi'] - met['auc_lo']) / (2 * 1.96 * se) == pytest.approx(1, abs=0.25)
    again = membership_metrics(s, m, decisions=d, n_boot=300, seed=1)
    assert again.keys() == met.keys() and all(again[k] == met[k] or (np.isnan(again[k]) and np.isnan(met[k])) for k in met)
    assert np.isnan(met['tpr_at_0_01pct_fpr_lo']) and np.isnan(met['tpr_at_0_01pct_fpr_hi'])  # ~1,500 non-members: no 0.01%
    wide = membership_metrics(s, m, n_boot=300, seed=1, alpha=0.01)
    assert wide['auc_hi'] - wide['auc_lo'] > met['auc_hi'] - met['auc_lo']


def test_bootstrap_many_chunks_consistent():
    "Chunking the resamples does not change the distribution: a large-n interval is narrow and centred."
    rng = np.random.default_rng(4)
    n = 60_000
    m = rng.random(n) < 0.5
    s = rng.normal(size=n) + 0.5 * m
    met = membership_metrics(s, m, n_boot=60, seed=0)
    assert met['auc_lo'] < met['auc'] < met['auc_hi'] and met['auc_hi'] - met['auc_lo'] < 0.02


def test_per_class():
    rng = np.random.default_rng(2)
    n = 2_000
    lab = rng.choice(['cat', 'dog', 'eel'], n)
    m = (rng.random(n) < 0.5) & (lab != 'eel')  # eel: non-members only
    s = rng.normal(size=n) + 2.0 * m * (lab == 'cat')
    d = s > 1.0
    pc = per_class_metrics(s, m, lab, decisions=d)
    assert isinstance(pc, pd.DataFrame) and pc['label'].tolist() == ['cat', 'dog', 'eel']
    for i, c in enumerate(['cat', 'dog']):
        sel = lab == c
        assert pc.loc[i, 'auc'] == pytest.approx(roc_auc_score(m[sel], s[sel]), abs=1e-9)
        dm, dn = d[sel][m[sel]], d[sel][~m[sel]]
        assert pc.loc[i, 'attack_acc'] == pytest.approx(0.5 * (dm.mean() + 1 - dn.mean()))
        assert pc.loc[i, 'best_acc'] == pytest.approx(fit_threshold(s[sel], m[sel])[1], abs=1e-12)
    assert pc.loc[2, ['auc', 'attack_acc', 'best_acc']].isna().all() and pc.loc[2, 'n_members'] == 0
    assert pc['n_members'].sum() == m.sum() and pc['n_nonmembers'].sum() == (~m).sum()
    assert per_class_metrics(s, m, lab)['attack_acc'].isna().all()


@pytest.mark.parametrize('call,msg', [
    (lambda: membership_metrics([0.1, 0.2, 0.3], [1, 0]), 'must match'),
    (lambda: membership_metrics([0.1, np.nan, 0.3], [1, 0, 1]), 'NaN'),
    (lambda: membership_metrics([0.1, -np.inf], [1, 0]), 'infinite'),
    (lambda: membership_metrics([0.1, 0.2], ['yes', 'no']), 'boolean-like'),
    (lambda: membership_metrics([0.1, 0.2], [2, 0]), 'boolean-like'),
    (lambda: membership_metrics([0.1, 0.2], [0, 0]), 'both members'),
    (lambda: membership_metrics([[0.1, 0.2]], [0, 1]), '1-D'),
    (lambda: membership_metrics(['a', 'b'], [0, 1]), 'numeric'),
    (lambda: membership_metrics([0.1, 0.2], [1, 0], decisions=[1, 0, 1]), 'decisions has length 3'),
    (lambda: membership_metrics([0.1, 0.2], [1, 0], decisions=[0.3, 1]), 'boolean-like'),
    (lambda: membership_metrics([0.1, 0.2], [1, 0], labels=[1]), 'labels'),
    (lambda: membership_metrics([0.1, 0.2], [1, 0], n_boot=1.5), 'n_boot'),
    (lambda: membership_metrics([0.1, 0.2], [1, 0], alpha=1.0), 'alpha'),
    (lambda: fit_threshold([0.1, 0.2], [1, 1]), 'both members'),
    (lambda: fit_threshold([0.1, np.nan], [1, 0]), 'NaN'),
    (lambda: fit_threshold_reference([0.1, 0.2, 0.3], [1, 0]), 'must match'),
    (lambda: roc_curve_points([0.1, 0.2], [1, 1]), 'both members'),
    (lambda: per_class_metrics([0.1, 0.2], [1, 0], [0]), 'labels'),
    (lambda: plot_roc({}), 'non-empty'),
])
def test_validation(call, msg):
    with pytest.raises(ValueError, match=msg): call()


def test_plot_roc_writes_atomically(tmp_path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    s, m = _tied_data(0, 1_000, 2)
    for log in [True, False]:
        out = tmp_path / f'roc_{log}.pdf'
        fig = plot_roc({'a': (s, m), 'b': (-s, m)}, log=log, path=out)
        assert out.read_bytes()[:4] == b'%PDF'
        assert len(fig.axes[0].lines) == 3  # chance + two curves
        plt.close(fig)
    fig, ax = plt.subplots()
    assert plot_roc({'a': (s, m)}, ax=ax) is fig
    plt.close(fig)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['roc_False.pdf', 'roc_True.pdf']
