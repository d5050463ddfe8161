"""The claims module: known answers on synthetic run folders, no torch, clear errors, and reading from committed tables alone."""

import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from mia_pruning import claims as C

NB = 200  # bootstrap resamples: enough for percentile intervals, cheap


@pytest.fixture(scope='module')
def up(tmp_path_factory):
    "Two seeds; pruning adds 0.1 to members' scores (class 0 only for the gaps), SAMIA has extra signal, PPB (both kinds) undoes it."
    return C.make_synthetic_grid(tmp_path_factory.mktemp('up'), seeds=(1, 2), sparsities=(0.5, 0.9), shift=0.1, samia_shift=0.2,
                                 ppb=(False, True), shift_classes=[0])


@pytest.fixture(scope='module')
def up_tables(up):
    return C.claim_tables(up, n_boot=NB)


def test_shift_holds_everywhere(up_tables):
    v = up_tables['verdicts'].set_index('claim')['verdict']
    assert v['a'] == 'holds' and v['b:confidence'] == 'holds' and v['b:sensitivity'] == 'holds'
    assert v['c:study_baselines'] == v['c:every_attack'] == 'holds'
    assert v['d:non-adaptive'] == v['d:adaptive'] == 'holds'
    r = up_tables['risk']
    assert (r['lo'] > 0).all() and (r['n_seeds'] == 2).all()
    assert r['strongest'].sum() == 2  # one per setting (two sparsities)


def test_per_class_gap_known(up_tables):
    bc = up_tables['gaps_by_class']
    conf = bc[(bc['quantity'] == 'confidence') & (bc['sparsity'] == 0.5)].set_index('class_name')
    assert conf.loc['T-shirt/top', 'change'] == pytest.approx(0.1, abs=1e-9)  # class names of fashion_mnist
    assert conf.loc[['Trouser', 'Pullover'], 'change'].abs().max() < 1e-12
    gaps = up_tables['gaps']
    assert (gaps['heterogeneity_p'] < 0.05).all() and (gaps['class_most_widened'] == 'T-shirt/top').all()
    # the pooled gap change is the class-0 shift weighted by class 0's share of the members
    assert gaps['change'].between(0.01, 0.1).all()


def test_identical_pair_is_zero_and_needs_margin(tmp_path):
    g = C.make_synthetic_grid(tmp_path / 'same', shift=0.0)
    t = C.claim_tables(g, n_boot=NB)
    r = t['risk']
    assert np.allclose(r[['change', 'lo', 'hi']].to_numpy(), 0)
    assert set(r['verdict']) == {'does not hold'}  # exactly 0 rules out a rise of MARGIN
    assert set(C.claim_tables(g, n_boot=NB, margin=0.0)['risk']['verdict']) == {'inconclusive'}


def test_independent_redraw_is_inconclusive(tmp_path):
    r = C.claim_tables(C.make_synthetic_grid(tmp_path / 'redraw', n=200, shift=0.0, redraw=True), n_boot=NB)['risk']
    assert ((r['lo'] < 0) & (r['hi'] > C.MARGIN)).all()
    assert set(r['verdict']) == {'inconclusive'}
    assert (r['mde'] > C.MARGIN).all()  # too small a victim to resolve 0.02: the MDE says so


def test_negative_shift_does_not_hold(tmp_path):
    r = C.claim_tables(C.make_synthetic_grid(tmp_path / 'down', shift=-0.1), n_boot=NB)['risk']
    assert set(r['verdict']) == {'does not hold'} and (r['hi'] < 0).all()


def test_not_learned_is_no_baseline(tmp_path):
    g = C.make_synthetic_grid(tmp_path / 'nl', samia_shift=0.2, not_learned=('conf',))
    t = C.claim_tables(g, n_boot=NB)
    assert set(t['samia']['best_baseline']) == {'loss'}
    r = t['risk'].set_index('attack')
    assert bool(r.loc['conf', 'not_learned']) and not bool(r.loc['conf', 'strongest'])


def test_ppb_accuracy_budget(up):
    t = C.claim_tables(up, n_boot=NB, acc_budget=0.005)  # PPB costs 1 point: over budget
    p = t['ppb']
    assert set(p['verdict']) == {'holds'} and not p['accuracy_kept'].any() and set(p['claim_verdict']) == {'does not hold'}
    assert p['acc_change'].to_numpy() == pytest.approx(-0.01)


def test_matched_accuracy(up_tables):
    mt = up_tables['matched']
    assert sorted(set(mt['sparsity'])) == [0.5]  # 0.5 loses 0.5 points, 0.9 loses 5
    v = up_tables['verdicts'].set_index('claim')
    assert v.loc['e', 'verdict'] == 'holds'


def test_no_match_says_so(tmp_path):
    g = C.make_synthetic_grid(tmp_path / 'drop', acc_drop={0.5: 0.05})
    v = C.claim_tables(g, n_boot=NB)['verdicts'].set_index('claim')
    assert v.loc['e', 'verdict'] == 'no data' and 'no setting has pruned test accuracy within' in v.loc['e', 'detail']


def test_write_then_load_without_runs(up, up_tables, tmp_path):
    g = tmp_path / 'g'
    shutil.copytree(up, g)
    paths = C.write_claims_tables(g, n_boot=NB)
    assert {p.name for p in paths} == {f'{k}.csv' for k in C.TABLES} | {'claims.json', 'claims.md'}
    md = (C.claims_dir(g) / 'claims.md').read_text()
    assert md.count('- **(') == len(up_tables['verdicts'])  # one verdict line per claim
    shutil.rmtree(g / 'runs')  # a fresh clone: only the committed tables
    back = C.load_claims(g)
    assert list(back) == list(C.TABLES)
    assert back['verdicts']['verdict'].tolist() == up_tables['verdicts']['verdict'].tolist()
    assert np.allclose(back['ppb']['change'], up_tables['ppb']['change'])
    assert back['risk'].attrs['n_boot'] == NB
    with pytest.raises(ValueError, match='no runs/'): C.load_claims(g, recompute=True)


def test_empty_tables_round_trip(tmp_path):
    g = C.make_synthetic_grid(tmp_path / 'noppb')  # no PPB cells: an empty ppb table
    C.write_claims_tables(g, n_boot=NB)
    back = C.load_claims(g)
    assert back['ppb'].empty and back['verdicts'].set_index('claim').loc['d:adaptive', 'verdict'] == 'no data'


def test_errors(tmp_path, up):
    with pytest.raises(ValueError, match='not a folder'): C.claim_tables(tmp_path / 'nowhere')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match='no summary.csv'): C.claim_tables(tmp_path / 'empty')
    with pytest.raises(ValueError, match='no claims tables'): C.load_claims(tmp_path / 'empty')
    with pytest.raises(ValueError, match='recompute=True'): C.load_claims(up)  # runs but no tables: says how
    with pytest.raises(ValueError, match='n_boot'): C.claim_tables(up, n_boot=10)
    with pytest.raises(ValueError, match='margin'): C.claim_tables(up, margin=-1)
    # a summary without pruned rows
    g = tmp_path / 'dense_only'
    shutil.copytree(up, g)
    s = pd.read_csv(g / 'summary.csv')
    s[s['model_state'] == 'dense'].to_csv(g / 'summary.csv', index=False)
    with pytest.raises(ValueError, match="no row with model_state 'pruned'"): C.claim_tables(g, n_boot=NB)
    # no runs folder
    h = tmp_path / 'no_runs'
    shutil.copytree(up, h); shutil.rmtree(h / 'runs')
    with pytest.raises(ValueError, match='no runs/ folder'): C.claim_tables(h)


def test_mismatched_states_refused(tmp_path):
    g = C.make_synthetic_grid(tmp_path / 'bad', seeds=(1,))
    rd = next((g / 'runs').iterdir())
    with np.load(rd / 'scores.npz') as z: arr = {k: z[k] for k in z.files}
    arr['pruned__index'] = arr['pruned__index'][::-1].copy()
    np.savez(rd / 'scores.npz', **arr)
    with pytest.warns(UserWarning, match='left out'), pytest.raises(ValueError, match='usable run folder'):
        C.claim_tables(g, n_boot=NB)


def test_ppb_cells_must_share_members(tmp_path):
    g = C.make_synthetic_grid(tmp_path / 'split', seeds=(1,), ppb=(False,))
    rd = next(p for p in (g / 'runs').iterdir() if '-ppb' in p.name)
    with np.load(rd / 'scores.npz') as z: arr = {k: z[k] for k in z.files}
    for s in ('dense', 'pruned'): arr[f'{s}__is_member'] = ~arr[f'{s}__is_member']
    np.savez(rd / 'scores.npz', **arr)
    with pytest.raises(ValueError, match='same victim members'): C.claim_tables(g, n_boot=NB)


def test_duplicate_seed_in_a_setting_refused(tmp_path, up):
    g = tmp_path / 'dup'
    shutil.copytree(up, g)
    s = pd.read_csv(g / 'summary.csv')
    s.loc[s['cell_id'].str.contains('-0.9-none-s2'), 'sparsity'] = 0.5  # two cells now claim sparsity 0.5, seed 2
    s.to_csv(g / 'summary.csv', index=False)
    with pytest.raises(ValueError, match='share setting'): C.claim_tables(g, n_boot=NB)


def test_torch_free(up, tmp_path):
    code = ('import sys; from mia_pruning.claims import claim_tables, write_claims_tables, load_claims; '
            f'write_claims_tables({str(up)!r}, out={str(tmp_path / "t")!r}, n_boot=100); '
            "assert 'torch' not in sys.modules, 'torch was imported'; print('ok')")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and 'ok' in r.stdout, r.stderr[-2000:]


def test_overall_verdict():
    assert C.overall_verdict(['holds', 'holds']) == 'holds'
    assert C.overall_verdict(['does not hold', 'inconclusive']) == 'does not hold'  # nowhere shown, somewhere ruled out
    assert C.overall_verdict(['holds', 'does not hold']) == 'mixed'
    assert C.overall_verdict(['holds', 'inconclusive']) == 'mixed'
    assert C.overall_verdict([]) == 'no data'
