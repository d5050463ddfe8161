"Per-sample exposure after pruning: synthetic run folders whose answers are known (no training)."
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import t as student_t

from mia_pruning.core import save_json
from mia_pruning.runs import finish_run, write_run_folder, StateArrays, read_scores, join_states, save_scores
from mia_pruning.data import class_names
from mia_pruning.metrics import membership_metrics
from mia_pruning.exposure import (per_sample_scores, exposure, exposure_counts, fpr_threshold, exposure_table,
                                  plot_exposure_scatter, plot_score_change, plot_class_exposure, plot_newly_exposed,
                                  plot_exposed_images, most_exposed, write_exposure_report, default_exposure_attacks,
                                  stored_attacks, STATES, SETTING_KEYS)

ATTACK = 'lira_offline'


def write_run(grid, name, dense, pruned, member, labels=None, index=None, attacks=(ATTACK,), **params):
    "A run folder in the pipeline's layout, written by hand."
    n, member = len(dense), np.asarray(member, bool)
    labels = np.zeros(n, np.int64) if labels is None else np.asarray(labels, np.int64)
    index = np.arange(n) if index is None else np.asarray(index, np.int64)
    p = dict(dataset='digits', arch='mlp', prune_method='l1_unstructured', sparsity=0.7, defense='none', adaptive=False,
             seed=0, num_shadows=3, cache_dir='/somewhere') | params
    states, rows = {}, []
    for s, sc in (('dense', dense), ('pruned', pruned)):
        common = {'is_member': member, 'labels': labels, 'index': index, 'py': np.full(n, 0.5)}
        score = {a: np.asarray(sc, np.float64) + 0.01 * k * member for k, a in enumerate(attacks)}  # later attacks see members a bit better
        states[s] = StateArrays(common, score, {a: v > 1 for a, v in score.items()})
        rows += [{'model_state': s, 'attack': a, 'auc': membership_metrics(v, member)['auc']} for a, v in score.items()]
    rd = write_run_folder(Path(grid) / 'runs' / name, params=p, provenance={'cell_id': name}, rows=rows, states=states, divergence={}, metrics={})
    finish_run(rd, name, notebook=False)  # certified, as the grid's driver certifies a finished run (exposure reads only those)
    return rd


def known_cell(n_new, n_gone, n_both, n_members=20, n_non=100, member_labels=None):
    """Members: n_both exposed in both states, n_new only after pruning, n_gone only before, the rest never;
    non-members score 0.00, 0.01, ..., in both states, so at 1% FPR both thresholds are the second-largest (0.98)."""
    d, p = np.full(n_members, 0.1), np.full(n_members, 0.1)
    a, b, c = n_both, n_both + n_new, n_both + n_new + n_gone
    d[:a], p[:a] = 2.0, 2.0
    d[a:b], p[a:b] = 0.5, 1.5
    d[b:c], p[b:c] = 1.5, 0.5
    non = np.arange(n_non) / n_non
    m = np.r_[np.ones(n_members, bool), np.zeros(n_non, bool)]
    y = np.r_[np.zeros(n_members, int) if member_labels is None else member_labels, np.zeros(n_non, int)]
    return np.r_[d, non], np.r_[p, non], m, y


@pytest.fixture
def grid(tmp_path):
    "Setting A (sparsity 0.7): 3 seeds with 3, 5, 4 newly exposed; setting B (0.9): one seed with 6."
    g = tmp_path / 'grid'
    for s, n_new in zip((0, 1, 2), (3, 5, 4)):
        labs = np.r_[[0, 0], [1] * n_new, [2], [0] * (17 - n_new)]  # both: class 0; newly: class 1; gone: class 2
        d, p, m, y = known_cell(n_new, 1, 2, member_labels=labs)
        write_run(g, f'A-s{s}', d, p, m, y, seed=s)
    d, p, m, y = known_cell(6, 0, 1)
    write_run(g, 'B-s0', d, p, m, y, sparsity=0.9)
    return g


def test_threshold_rule():
    s = np.arange(100.)
    assert fpr_threshold(s, 0.05) == 94.0 and (s > 94.0).sum() == 5
    assert fpr_threshold(s, 0.01) == 98.0
    assert fpr_threshold(s[::-1], 0.01) == 98.0  # order does not matter
    assert fpr_threshold([0, 1, 1, 1, 1], 0.2) == 1.0  # ties at the top: nothing strictly above
    assert math.isnan(fpr_threshold(s, 0.005))  # finer than 1/n: not a number
    assert fpr_threshold(s, 0.999) == 0.0  # k = 99: the smallest score, 99 above it
    for bad in (0, 1, -0.1, 2, 'x', True):
        with pytest.raises(ValueError, match='fpr must be'): fpr_threshold(s, bad)
    with pytest.raises(ValueError, match='NaN'): fpr_threshold([1.0, np.nan], 0.5)


def test_counts_known_answer():
    d, p, m, y = known_cell(3, 1, 2, member_labels=np.r_[[0, 0, 1, 1, 2, 0], np.zeros(14, int)])
    c = exposure_counts(d, p, m, y, fpr=0.01)
    assert (c['newly_exposed'], c['no_longer_exposed'], c['exposed_both'], c['net_exposed']) == (3, 1, 2, 2)
    assert c['dense_threshold'] == 0.98 and c['pruned_threshold'] == 0.98
    assert c['dense_tpr'] == pytest.approx(3 / 20) and c['pruned_tpr'] == pytest.approx(5 / 20)
    assert c['dense_fpr'] == pytest.approx(0.01) and c['newly_fp'] == 0 and c['fp_both'] == 1
    assert c['newly_exposed_rate'] == pytest.approx(3 / 20)
    bc = c['by_class'].set_index('label')
    assert bc['newly_exposed'].tolist() == [0, 2, 1] and bc['n_members'].tolist() == [17, 2, 1]
    assert bc['no_longer_exposed'].tolist() == [1, 0, 0] and bc['exposed_both'].tolist() == [2, 0, 0]


def test_identical_scores_change_nothing_and_rank_correlation():
    rng = np.random.default_rng(0)
    s = rng.normal(size=300); m = np.arange(300) < 150
    c = exposure_counts(s, s, m)
    assert (c['newly_exposed'], c['no_longer_exposed'], c['newly_fp'], c['no_longer_fp']) == (0, 0, 0, 0)
    assert c['spearman'] == pytest.approx(1.0) and c['spearman_members'] == pytest.approx(1.0)
    assert exposure_counts(s, -s, m)['spearman'] == pytest.approx(-1.0)
    # a monotone transform is no change at all: per-state thresholds follow the scale
    c2 = exposure_counts(s, np.exp(3 * s) + 5, m)
    assert (c2['newly_exposed'], c2['no_longer_exposed']) == (0, 0) and c2['spearman'] == pytest.approx(1.0)


def test_new_false_positives():
    "Swap the top and bottom non-member in the pruned state: one false positive appears, one disappears."
    d, p, m, y = known_cell(0, 0, 0)
    p = p.copy(); p[20], p[-1] = p[-1], p[20]  # non-members: first scores 0.00, last 0.99
    c = exposure_counts(d, p, m, y)
    assert (c['newly_fp'], c['no_longer_fp'], c['fp_both']) == (1, 1, 0)
    assert c['spearman_nonmembers'] < 1


def test_counts_refuse_bad_input():
    d, p, m, y = known_cell(3, 1, 2)
    with pytest.raises(ValueError, match='one length'): exposure_counts(d, p[:-1], m)
    with pytest.raises(ValueError, match='both members and non-members'): exposure_counts(d, p, np.ones_like(m))
    with pytest.raises(ValueError, match='NaN'): exposure_counts(np.r_[np.nan, d[1:]], p, m)
    with pytest.raises(ValueError, match='is_member must be boolean'): exposure_counts(d, p, np.full(len(m), 'a'))


def test_per_sample_scores_reads_runs(grid):
    df = per_sample_scores(grid, ATTACK)
    assert len(df) == 4 * 120 and sorted(df['cell_id'].unique()) == ['A-s0', 'A-s1', 'A-s2', 'B-s0']
    for c in ('cell_id', 'seed', *SETTING_KEYS, 'index', 'label', 'is_member', 'dense_score', 'pruned_score'):
        assert c in df.columns, c
    assert 'cache_dir' not in df.columns and 'num_shadows' not in df.columns  # same everywhere: not an axis
    a1 = df[df.cell_id == 'A-s1']
    d, p, m, y = known_cell(5, 1, 2)
    np.testing.assert_array_equal(a1['dense_score'], d); np.testing.assert_array_equal(a1['pruned_score'], p)
    np.testing.assert_array_equal(a1['is_member'], m)
    assert a1['seed'].unique().tolist() == [1] and df[df.cell_id == 'B-s0']['sparsity'].unique().tolist() == [0.9]


def test_incomplete_runs_skipped_with_warning(grid):
    save_json(grid / 'runs' / 'half' / 'params.json', {'params': {'seed': 5}})  # no scores.npz
    write_run(grid, 'other', *known_cell(1, 1, 1), attacks=('loss',))  # never ran the attack: passed over without a warning
    (grid / 'runs' / 'corrupt').mkdir()
    (grid / 'runs' / 'corrupt' / 'params.json').write_text('{not json')
    with pytest.warns(UserWarning) as rec:
        df = per_sample_scores(grid, ATTACK)
    msgs = ' '.join(str(w.message) for w in rec)
    assert 'half' in msgs and 'corrupt' in msgs and 'runs/other' not in msgs
    assert sorted(df['cell_id'].unique()) == ['A-s0', 'A-s1', 'A-s2', 'B-s0']
    with pytest.warns(UserWarning), pytest.raises(ValueError, match='no usable run'): per_sample_scores(grid, 'rmia')
    with pytest.raises(ValueError, match='not a folder'): per_sample_scores(grid / 'nope', ATTACK)
    with pytest.raises(ValueError, match='no runs/ folder'): per_sample_scores(grid / 'runs', ATTACK)


def test_mismatched_index_refused(tmp_path):
    rd = write_run(tmp_path, 'x', *known_cell(3, 1, 2))
    st = read_scores(rd); d, p = st['dense'].common, st['pruned'].common
    p['index'] = d['index'][::-1].copy()
    save_scores(rd, join_states(st)); finish_run(rd, notebook=False)
    with pytest.raises(ValueError, match='same victim samples in the same order'): per_sample_scores(tmp_path, ATTACK)
    p['index'] = d['index']; p['is_member'] = ~d['is_member']
    save_scores(rd, join_states(st)); finish_run(rd, notebook=False)
    with pytest.raises(ValueError, match='is_member arrays differ'): per_sample_scores(tmp_path, ATTACK)


def test_exposure_over_seeds_t_interval(grid):
    res = exposure(grid, ATTACK, fpr=0.01, n_boot=200)
    assert len(res.summary) == 2 and len(res.cells) == 4
    a = res.summary.set_index('sparsity').loc[0.7]
    assert (a['n_seeds'], a['newly_exposed'], a['no_longer_exposed'], a['exposed_both']) == (3, 4.0, 1.0, 2.0)
    half = student_t.ppf(0.975, 2) * 1.0 / math.sqrt(3)  # counts 3, 5, 4: sd 1
    assert a['newly_exposed_lo'] == pytest.approx(4 - half) and a['newly_exposed_hi'] == pytest.approx(4 + half)
    assert a['no_longer_exposed_lo'] == a['no_longer_exposed_hi'] == 1.0  # no spread, no width
    assert a['interval'] == 't over 3 seeds' and a['seeds'] == '0,1,2'
    assert a['newly_exposed_rate'] == pytest.approx(4 / 20) and a['fpr_floor'] == pytest.approx(0.01)
    cells = res.cells.set_index('cell_id')
    assert cells.loc[['A-s0', 'A-s1', 'A-s2'], 'newly_exposed'].tolist() == [3, 5, 4]
    # the samples carry the per-state flags and a status
    s0 = res.samples[res.samples.cell_id == 'A-s0']
    assert s0['status'].value_counts().to_dict() == {'neither': 14 + 99, 'newly exposed': 3, 'exposed in both': 2 + 1, 'no longer exposed': 1}
    assert (s0['change'] == s0['pruned_score'] - s0['dense_score']).all()
    # the same from the frame
    res2 = exposure(per_sample_scores(grid, ATTACK), n_boot=0)
    assert res2.summary['newly_exposed'].tolist() == res.summary['newly_exposed'].tolist()


def test_exposure_single_seed_bootstrap(grid):
    res = exposure(grid, ATTACK, n_boot=300, seed=1)
    b = res.summary.set_index('sparsity').loc[0.9]
    assert b['n_seeds'] == 1 and b['newly_exposed'] == 6 and b['interval'].startswith('bootstrap over samples (one seed, B=300)')
    assert b['newly_exposed_lo'] <= 6 <= b['newly_exposed_hi'] and b['newly_exposed_hi'] > b['newly_exposed_lo']
    again = exposure(grid, ATTACK, n_boot=300, seed=1).summary.set_index('sparsity').loc[0.9]
    assert again['newly_exposed_lo'] == b['newly_exposed_lo']  # seeded
    none = exposure(grid, ATTACK, n_boot=0).summary.set_index('sparsity').loc[0.9]
    assert np.isnan(none['newly_exposed_lo']) and 'n_boot=0' in none['interval']


def test_exposure_by_class(grid):
    res = exposure(grid, ATTACK, n_boot=0)
    a = res.by_class[res.by_class['sparsity'] == 0.7].set_index('label')
    assert a['newly_exposed'].tolist() == [0.0, 4.0, 0.0]  # all newly exposed members are class 1
    assert a['no_longer_exposed'].tolist() == [0.0, 0.0, 1.0] and a['exposed_both'].tolist() == [2.0, 0.0, 0.0]
    assert a['class_name'].tolist() == ['0', '1', '2']
    half = student_t.ppf(0.975, 2) / math.sqrt(3)
    assert a.loc[1, 'newly_exposed_hi'] == pytest.approx(4 + half)
    assert a.loc[1, 'newly_exposed_rate'] == pytest.approx(1.0)  # class 1 holds exactly the newly exposed members
    assert a['n_members'].tolist() == [pytest.approx(v) for v in [(16 + 14 + 15) / 3, 4, 1]]


def test_unresolvable_fpr_is_nan(grid):
    with pytest.warns(UserWarning, match='finer than 1/n_nonmembers'):
        res = exposure(grid, ATTACK, fpr=0.005, n_boot=0)
    assert res.cells['newly_exposed'].isna().all() and res.summary['newly_exposed'].isna().all()
    assert res.cells['spearman'].notna().all()  # the rank correlation needs no threshold
    assert (res.samples['status'] == 'unresolved').all()
    with pytest.raises(ValueError, match='fpr must be'): exposure(grid, ATTACK, fpr=0)
    with pytest.raises(ValueError, match='attack= is needed'): exposure(grid)


def test_varying_parameter_splits_settings(tmp_path):
    "A parameter the grid varies (num_shadows) is a setting key: seeds of different settings are never pooled."
    for s, k in ((0, 2), (1, 4)): write_run(tmp_path, f'k{k}', *known_cell(3, 0, 0), seed=s, num_shadows=k)
    res = exposure(tmp_path, ATTACK, n_boot=0)
    assert len(res.summary) == 2 and 'num_shadows' in res.summary.columns
    assert res.summary['n_seeds'].tolist() == [1, 1] and 'num_shadows=2' in res.summary['setting_label'].iloc[0]


def test_defaults_and_tables(grid):
    write_run(grid, 'C-s0', *known_cell(2, 0, 0), attacks=(ATTACK, 'loss', 'conf'), sparsity=0.5)
    assert stored_attacks(grid) == ['conf', ATTACK, 'loss']
    assert default_exposure_attacks(grid) == [ATTACK, 'conf']  # conf's members score higher than loss's: its AUC is higher
    t = exposure_table(exposure(grid, ATTACK, n_boot=0))
    assert t['newly exposed'].iloc[1].startswith('4.0 [') and t['seeds'].tolist() == [1, 3, 1]
    assert class_names('fashion_mnist')[6] == 'Shirt' and class_names('digits', 10)[3] == '3' and class_names('svhn', 2) == ['0', '1']


def test_figures_and_report(grid, tmp_path):
    import matplotlib.figure
    res = exposure(grid, ATTACK, n_boot=50)
    out = tmp_path / 'figs'
    for fn in (plot_exposure_scatter, plot_score_change, plot_class_exposure, plot_newly_exposed):
        fig = fn(res, path=out / f'{fn.__name__}.png')
        assert isinstance(fig, matplotlib.figure.Figure) and (out / f'{fn.__name__}.png').stat().st_size > 1000
    top = most_exposed(res, res.pick(), k=4)
    assert len(top) == 4 and (top['times_newly_exposed'] == 1).all()
    # setting A: the same member indices (2..6 at most) are newly exposed across its seeds
    topa = most_exposed(res, res.summary.loc[res.summary['sparsity'] == 0.7, 'setting'].iloc[0], k=3)
    assert topa['index'].tolist() == [2, 3, 4] and topa['times_newly_exposed'].tolist() == [3, 3, 3]
    with pytest.warns(UserWarning, match='images'):
        w = write_exposure_report(grid, tmp_path / 'rep', attacks=ATTACK, n_boot=50)  # synthetic labels do not match digits
    assert set(w[ATTACK]) == {'summary', 'by_class', 'cells', 'table', 'overview', 'scatter', 'change', 'by_class_fig'}
    assert all(Path(p).is_file() for p in w[ATTACK].values())
    assert pd.read_csv(w[ATTACK]['summary'])['newly_exposed'].tolist() == res.summary['newly_exposed'].tolist()
    with pytest.raises(ValueError, match='no setting'): res.pick(99)


def test_exposed_images_on_digits(tmp_path):
    "On the real digits pool, with indices and labels that address it, the image grid draws the newly exposed members."
    from mia_pruning.data import load_dataset
    ds = load_dataset('digits')
    idx = np.arange(120) * 3
    d, p, m, _ = known_cell(3, 1, 2)
    write_run(tmp_path, 'img', d, p, m, labels=ds.y.numpy()[idx], index=idx)
    res = exposure(tmp_path, ATTACK, n_boot=0)
    fig = plot_exposed_images(res, path=tmp_path / 'img.png', ds=ds)
    assert (tmp_path / 'img.png').stat().st_size > 1000
    titles = [a.get_title() for a in fig.axes if a.get_title()]
    assert len(titles) == 3 and all(f'#{i}' in t for i, t in zip(idx[2:5], titles))
    wrong = load_dataset('digits')
    write_run(tmp_path, 'img', d, p, m, labels=(ds.y.numpy()[idx] + 1) % 10, index=idx)
    with pytest.raises(ValueError, match='do not address'): plot_exposed_images(exposure(tmp_path, ATTACK, n_boot=0), ds=wrong)


def test_states_match_pipeline():
    try: from mia_pruning.pipeline import STATES as P
    except ImportError as e: pytest.skip(f'pipeline not importable now: {e}')
    assert tuple(P) == STATES


def test_t_interval_cut_to_the_metric_range(tmp_path):
    "Counts 0 and 6 over two seeds: mean 3, t(0.975, 1) = 12.7 would put the lower end far below 0; it is cut at 0."
    for s, n_new in ((0, 0), (1, 6)): write_run(tmp_path, f's{s}', *known_cell(n_new, 0, 0), seed=s)
    a = exposure(tmp_path, ATTACK, n_boot=0).summary.iloc[0]
    half = student_t.ppf(0.975, 1) * np.std([0, 6], ddof=1) / math.sqrt(2)
    assert a['newly_exposed'] == 3 and a['newly_exposed_lo'] == 0 and a['newly_exposed_hi'] == pytest.approx(3 + half)
    assert a['newly_exposed_rate_hi'] <= 1 and a['spearman_hi'] <= 1 and a['spearman_lo'] >= -1
    assert a['net_exposed_lo'] == pytest.approx(3 - half)  # a signed difference is not cut


def test_rank_correlation_matches_scipy_with_ties():
    from scipy.stats import spearmanr
    rng = np.random.default_rng(3)
    d = rng.integers(0, 7, 200).astype(float); p = d + rng.integers(0, 3, 200); m = np.arange(200) % 3 == 0
    c = exposure_counts(d, p, m, fpr=0.05)
    assert c['spearman'] == pytest.approx(spearmanr(d, p)[0])
    assert c['spearman_members'] == pytest.approx(spearmanr(d[m], p[m])[0])
    assert c['spearman_nonmembers'] == pytest.approx(spearmanr(d[~m], p[~m])[0])


def test_bootstrap_rows_are_the_counts_of_each_resample():
    "Each vectorised bootstrap row equals exposure_counts run on that resample by itself."
    from mia_pruning.exposure import _batch_counts
    rng = np.random.default_rng(4)
    n = 300; m = np.arange(n) < 120; y = rng.integers(0, 4, n)
    d = np.round(rng.normal(size=n) + m, 1); p = np.round(d + rng.normal(size=n) * 0.7, 1)
    ii, oo = np.flatnonzero(m), np.flatnonzero(~m)
    si, so = ii[rng.integers(0, len(ii), (5, len(ii)))], oo[rng.integers(0, len(oo), (5, len(oo)))]
    r, cls = _batch_counts(d, p, y, si, so, 0.02, 4)
    for b in range(5):
        s = np.r_[si[b], so[b]]
        c = exposure_counts(d[s], p[s], m[s], y[s], fpr=0.02)
        for k in ('newly_exposed', 'no_longer_exposed', 'newly_fp', 'dense_threshold', 'spearman', 'spearman_members', 'spearman_nonmembers'):
            assert r[k][b] == pytest.approx(c[k]), (b, k)
        np.testing.assert_allclose(cls['newly_exposed'][b], c['by_class']['newly_exposed'].reindex(range(4), fill_value=0))


def test_exposed_images_with_a_subsample(tmp_path):
    "With subsample > 0 each seed's indices address that seed's subsample: records are told apart by (seed, index)."
    from mia_pruning.data import load_dataset, subsample_dataset
    d, p, m, _ = known_cell(3, 1, 2)
    idx = np.arange(120) * 2
    for s in (0, 1):
        pool = subsample_dataset(load_dataset('digits'), 300, s)
        write_run(tmp_path, f's{s}', d, p, m, labels=pool.y.numpy()[idx], index=idx, seed=s, subsample=300)
    res = exposure(tmp_path, ATTACK, n_boot=0)
    assert len(res.summary) == 1 and res.summary['subsample'].tolist() == [300]
    top = most_exposed(res, k=10)
    assert len(top) == 6 and set(top['seed']) == {0, 1} and (top['times_newly_exposed'] == 1).all()
    fig = plot_exposed_images(res, k=10)
    titles = [a.get_title() for a in fig.axes if a.get_title()]
    assert len(titles) == 6 and all('(seed ' in t for t in titles)
    # without the subsample the same indices do not address the pool: refused
    for s in (0, 1):
        write_run(tmp_path, f's{s}', d, p, m, labels=subsample_dataset(load_dataset('digits'), 300, s).y.numpy()[idx], index=idx, seed=s)
    r0 = exposure(tmp_path, ATTACK, n_boot=0)
    assert not np.array_equal(load_dataset('digits').y.numpy()[idx], r0.samples.query("cell_id == 's0'")['label'].to_numpy())
    with pytest.raises(ValueError, match='do not address'): plot_exposed_images(r0)
