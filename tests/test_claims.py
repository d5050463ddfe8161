"""The claims module: known answers on synthetic grids (with run folders and from summary.csv alone), each label reached, relative paths, no torch."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mia_pruning import claims as C
from mia_pruning.runs import read_scores, save_scores, join_states
from mia_pruning.evidence import LABELS

SEEDS = (1, 2, 3)


@pytest.fixture(scope='module')
def up(tmp_path_factory):
    "Three seeds; pruning adds 0.1 to members' scores (class 0 only for the gaps), SAMIA has extra signal, PPB (both kinds) undoes it."
    return C.make_synthetic_grid(tmp_path_factory.mktemp('up'), seeds=SEEDS, sparsities=(0.5, 0.9), shift=0.1, samia_shift=0.2,
                                 ppb=(False, True), shift_classes=[0])


@pytest.fixture(scope='module')
def up_tables(up):
    return C.claim_tables(up)


def test_shift_is_raised_everywhere(up_tables):
    v = up_tables['verdicts'].set_index('claim')['verdict']
    assert v['a:conf'] == v['a:samia'] == 'raised' and v['b:confidence'] == 'raised'
    assert v['c:study_baselines'] == 'raised'
    assert v['d:non-adaptive'] == v['d:adaptive'] == 'lowered'
    r = up_tables['risk']
    assert (r['lo'] > 0).all() and (r['n_seeds'] == 3).all() and set(r['interval']) == {'random effects, t(2)'}
    assert sorted(r.loc[r['primary'], 'attack'].unique()) == ['conf', 'samia']  # conf stands in for the absent mentr
    assert (r.loc[r['primary'], 'p_holm'] >= r.loc[r['primary'], 'p']).all() and r.loc[~r['primary'], 'p_holm'].isna().all()


def test_per_class_gap_known(up_tables):
    bc = up_tables['gaps_by_class']
    conf = bc[(bc['quantity'] == 'confidence') & (bc['sparsity'] == 0.5)].set_index('class_name')
    assert conf.loc['T-shirt/top', 'change'] == pytest.approx(0.1, abs=1e-9)
    assert conf.loc[['Trouser', 'Pullover'], 'change'].abs().max() < 1e-12
    gaps = up_tables['gaps']
    assert (gaps['heterogeneity_p_relative'] < 0.05).all() and (gaps['class_most_widened'] == 'T-shirt/top').all()


def test_relative_heterogeneity_sees_proportional_change_as_one():
    h = C.class_heterogeneity([0.02, 0.04, 0.08], [0.002] * 3, [0.05, 0.10, 0.20])  # each class: 0.4 x its dense gap
    assert h['p_absolute'] < 1e-6 and h['p_relative'] == pytest.approx(1.0) and h['slope'] == pytest.approx(0.4)
    h = C.class_heterogeneity([0.08, 0.0, 0.0], [0.002] * 3, [0.05, 0.10, 0.20])
    assert h['p_relative'] < 1e-6


def _labels(tmp_path, name, **kw):
    return set(C.claim_tables(C.make_synthetic_grid(tmp_path / name, seeds=SEEDS, **kw))['risk']['verdict'])


def test_each_risk_label_reached(tmp_path):
    "Constructed grids whose claim (a) rows take each label."
    assert _labels(tmp_path, 'same', shift=0.0) == {'no change within the margin'}
    assert _labels(tmp_path, 'noisy', n=200, shift=0.0, redraw=True) == {'inconclusive'}
    assert _labels(tmp_path, 'down', shift=-0.1) == {'lowered'}
    assert _labels(tmp_path, 'collapsed', acc_drop={0.5: 0.8}) == {'not tested'}
    assert _labels(tmp_path, 'up', shift=0.1) == {'raised'}


def test_below_the_margin_labels():
    for (lo, hi), want in {(0.004, 0.012): 'raised, below the margin', (-0.012, -0.004): 'lowered, below the margin'}.items():
        assert C.verdict_label(lo, hi, C.MARGIN)[0] == want


def test_outside_the_regime_is_not_tested(tmp_path):
    g = C.make_synthetic_grid(tmp_path / 'regime', seeds=SEEDS, acc_drop={0.5: 0.05})
    s = pd.read_csv(g / 'summary.csv')
    s.loc[s['model_state'] == 'pruned', 'train_acc'] = 0.9  # members no longer fitted, and 5 points of test accuracy lost
    s.to_csv(g / 'summary.csv', index=False)
    r = C.claim_tables(g)['risk']
    assert set(r['verdict']) == {'not tested'} and r['reason'].str.startswith('outside the regime').all()
    assert (r['change'] > 0).all()  # the change is still reported


def test_not_learned_is_not_tested(tmp_path):
    t = C.claim_tables(C.make_synthetic_grid(tmp_path / 'nl', seeds=SEEDS, samia_shift=0.2, not_learned=('samia',)))
    assert set(t['samia']['verdict']) == {'not tested'}
    r = t['risk'].set_index('attack')
    assert r.loc['samia', 'verdict'] == 'not tested' and r.loc['samia', 'reason'] == 'the attack did not learn'


def test_ppb_reports_auc_and_accuracy_with_intervals(up):
    p = C.claim_tables(up, acc_budget=0.005)['ppb']  # PPB costs exactly 1 point in every seed: over a half-point budget
    assert set(p['verdict']) == {'lowered'} and set(p['accuracy']) == {'cost beyond 0.005'}
    assert p['acc_change'].to_numpy() == pytest.approx(-0.01) and p['acc_lo'].to_numpy() == pytest.approx(-0.01)
    assert set(C.claim_tables(up)['ppb']['accuracy']) == {'kept within 0.03'}


def test_matched_accuracy(up_tables):
    assert sorted(set(up_tables['matched']['sparsity'])) == [0.5]  # 0.5 loses 0.5 points, 0.9 loses 5
    assert up_tables['verdicts'].set_index('claim').loc['e', 'verdict'] == 'raised'


def test_identical_attacks_count_once(tmp_path):
    g = C.make_synthetic_grid(tmp_path / 'dup', seeds=SEEDS)
    s = pd.read_csv(g / 'summary.csv')
    twin = s[s['attack'] == 'conf'].assign(attack='top1_conf')
    pd.concat([s, twin]).to_csv(g / 'summary.csv', index=False)
    shutil.rmtree(g / 'runs')  # from summary.csv: the twin's scores are not in scores.npz
    t = C.claim_tables(g)
    assert 'top1_conf' not in set(t['risk']['attack']) and t['risk'].attrs['identical_attacks'] == {'top1_conf': 'conf'}
    assert t['risk'].set_index('attack').loc['conf', 'same_as'] == 'top1_conf'


def test_summary_source_matches_scores_per_seed(up, up_tables, tmp_path):
    g = tmp_path / 'clone'
    shutil.copytree(up, g); shutil.rmtree(g / 'runs')
    t = C.claim_tables(g)
    assert t['risk']['per_seed'].tolist() == up_tables['risk']['per_seed'].tolist()
    assert t['risk'].attrs['source'] == 'summary' and t['gaps'].empty
    assert t['verdicts'].set_index('claim').loc['b:confidence', 'verdict'] == 'not tested'
    # Hanley-McNeil as if unpaired is an upper bound of the paired DeLong error
    assert (t['risk']['member_se'].to_numpy() >= up_tables['risk']['member_se'].to_numpy()).all()


def test_write_then_load_and_recompute(up, up_tables, tmp_path):
    g = tmp_path / 'g'
    shutil.copytree(up, g)
    paths = C.write_claims_tables(g)
    assert {p.name for p in paths} == {f'{k}.csv' for k in C.TABLES} | {'claims.json', 'claims.md'}
    md = (C.claims_dir(g) / 'claims.md').read_text()
    assert md.count('- **(') == len(up_tables['verdicts'])
    back = C.load_claims(g)
    assert back['verdicts']['verdict'].tolist() == up_tables['verdicts']['verdict'].tolist()
    assert np.allclose(back['ppb']['change'], up_tables['ppb']['change'])
    first = {p.name: p.read_bytes() for p in paths}
    assert {p.name: p.read_bytes() for p in C.write_claims_tables(g)} == first  # deterministic: byte for byte


def test_recorded_paths_are_relative(up, tmp_path):
    "A grid run in /tmp records its folder from outputs/ on (or its name), never the absolute path (issue 22)."
    g = tmp_path / 'deep' / 'outputs' / 'quick'
    shutil.copytree(up, g)
    C.write_claims_tables(g)
    text = (C.claims_dir(g) / 'claims.md').read_text() + (C.claims_dir(g) / 'claims.json').read_text()
    assert str(tmp_path) not in text and 'Grid `outputs/quick`' in text
    assert C.load_claims(g)['risk'].attrs['grid'] == 'outputs/quick'
    assert C._grid_label(Path(__file__).resolve().parents[1] / 'outputs' / 'study') == 'outputs/study'  # inside the repository


def test_committed_study_tables_recompute_byte_for_byte(tmp_path):
    "The committed claims tables are what the code computes from the committed summary.csv."
    root = Path(__file__).resolve().parents[1]
    from mia_pruning.parts import restore_parts
    for grid in ('study', 'quick', 'study_tabular'):
        src = root / 'outputs' / grid
        g = tmp_path / 'outputs' / grid
        g.mkdir(parents=True); shutil.copy(src / 'summary.csv', g / 'summary.csv')
        if (src / 'parts').is_dir():  # committed parts (10h_parts): the run folders, restored byte for byte (runs/ is not committed)
            shutil.copytree(src / 'parts', g / 'parts'); assert restore_parts(g)
        elif (src / 'runs').is_dir(): shutil.copytree(src / 'runs', g / 'runs')  # committed run folders: per-sample scores
        for p in C.write_claims_tables(g):
            assert p.read_bytes() == (C.claims_dir(src) / p.name).read_bytes(), f'{grid}: {p.name} differs'


def test_committed_claims_across_datasets_recompute_byte_for_byte(tmp_path):
    "outputs/claims_across.{csv,md}: each claim's label per dataset, from the grids' committed claims tables."
    root = Path(__file__).resolve().parents[1] / 'outputs'
    grids = {'fashion_mnist': root / 'study', 'letter': root / 'study_tabular'}
    for p in C.write_claims_across(grids, tmp_path):
        assert p.read_bytes() == (root / p.name).read_bytes(), f'{p.name} differs'
    t = C.claims_across(grids)
    assert {'fashion_mnist', 'letter', 'across'} <= set(t.columns) and t['claim'].str.startswith('a:').any()


def test_empty_tables_round_trip(tmp_path):
    g = C.make_synthetic_grid(tmp_path / 'noppb', seeds=SEEDS)
    C.write_claims_tables(g)
    back = C.load_claims(g)
    assert back['ppb'].empty and back['verdicts'].set_index('claim').loc['d:adaptive', 'verdict'] == 'no data'


def test_errors(tmp_path, up):
    with pytest.raises(ValueError, match='not a folder'): C.claim_tables(tmp_path / 'nowhere')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match='no summary.csv'): C.claim_tables(tmp_path / 'empty')
    with pytest.raises(ValueError, match='no claims tables'): C.load_claims(tmp_path / 'empty')
    with pytest.raises(ValueError, match='recompute=True'): C.load_claims(up)
    with pytest.raises(ValueError, match='margin'): C.claim_tables(up, margin=-1)
    g = tmp_path / 'dense_only'
    shutil.copytree(up, g)
    s = pd.read_csv(g / 'summary.csv')
    s[s['model_state'] == 'dense'].to_csv(g / 'summary.csv', index=False)
    with pytest.raises(ValueError, match="no row with model_state 'pruned'"): C.claim_tables(g)


def test_mismatched_states_refused(tmp_path):
    g = C.make_synthetic_grid(tmp_path / 'bad', seeds=(1,))
    rd = next((g / 'runs').iterdir())
    st = read_scores(rd)
    st['pruned'].common['index'] = st['pruned'].common['index'][::-1].copy()
    save_scores(rd, join_states(st))
    with pytest.warns(UserWarning, match='left out'), pytest.raises(ValueError, match='usable run folder'):
        C.claim_tables(g)


def test_ppb_cells_must_share_members(tmp_path):
    g = C.make_synthetic_grid(tmp_path / 'split', seeds=(1, 2), ppb=(False,))
    rd = next(p for p in (g / 'runs').iterdir() if '-ppb' in p.name)
    st = read_scores(rd)
    for s in ('dense', 'pruned'): st[s].common['is_member'] = ~st[s].is_member
    save_scores(rd, join_states(st))
    with pytest.raises(ValueError, match='same victim members'): C.claim_tables(g)


def test_duplicate_seed_in_a_setting_refused(tmp_path, up):
    g = tmp_path / 'dup'
    shutil.copytree(up, g)
    s = pd.read_csv(g / 'summary.csv')
    s.loc[s['cell_id'].str.contains('-0.9-none-s2'), 'sparsity'] = 0.5
    s.to_csv(g / 'summary.csv', index=False)
    with pytest.raises(ValueError, match='share setting'): C.claim_tables(g)


def test_torch_free(up, tmp_path):
    code = ('import sys; from mia_pruning.claims import claim_tables, write_claims_tables, load_claims; '
            f'write_claims_tables({str(up)!r}, out={str(tmp_path / "t")!r}); '
            "assert 'torch' not in sys.modules, 'torch was imported'; print('ok')")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and 'ok' in r.stdout, r.stderr[-2000:]


def test_overall_verdict():
    assert C.overall_verdict(['raised', 'raised']) == 'raised'
    assert C.overall_verdict(['raised', 'not tested']) == 'raised'  # rows that are no test do not vote
    assert C.overall_verdict(['raised', 'inconclusive']) == 'mixed'
    assert C.overall_verdict(['not tested']) == 'not tested'
    assert C.overall_verdict([]) == 'no data'
    assert set(LABELS) >= {'raised', 'raised, below the margin', 'no change within the margin', 'lowered', 'inconclusive', 'not tested'}


def test_cells_of_the_several_release_adversary_stay_out_of_the_claims(tmp_path):
    "A cell with `releases` repeats its siblings' models (same seed, same setting): the claims ignore it, not count the seed twice."
    g = C.make_synthetic_grid(tmp_path / 'rel', seeds=SEEDS, shift=0.1); shutil.rmtree(g / 'runs')
    s = pd.read_csv(g / 'summary.csv')
    before = C.claim_tables(g)
    extra = s.assign(cell_id=s['cell_id'] + 'r', releases='0.5,0.9')
    pd.concat([s, extra]).to_csv(g / 'summary.csv', index=False)
    after = C.claim_tables(g)
    assert after['verdicts']['verdict'].tolist() == before['verdicts']['verdict'].tolist()
    assert after['risk']['change'].equals(before['risk']['change']) and before['risk']['seeds'].tolist() == after['risk']['seeds'].tolist()


def test_a_cell_of_samia_beside_the_main_one_merges_into_one_unit(tmp_path):
    "study_recipe runs SAMIA in cells of its own beside each setting's main cell: the two are one seed's unit, and the tables are those of one cell."
    g = C.make_synthetic_grid(tmp_path / 'one', seeds=SEEDS, samia_shift=0.2)
    split = tmp_path / 'split'
    shutil.copytree(g, split)
    s = pd.read_csv(split / 'summary.csv')
    extra = []
    for cid in s['cell_id'].unique():
        st = read_scores(split / 'runs' / cid)
        side = {k: C.StateArrays(dict(v.common), {a: x for a, x in v.scores.items() if a in ('samia', 'conf')},
                                 {a: x for a, x in v.preds.items() if a in ('samia', 'conf')}) for k, v in st.items() if k in ('dense', 'pruned')}
        for v in st.values(): v.scores.pop('samia', None); v.preds.pop('samia', None)
        save_scores(split / 'runs' / cid, join_states(st))
        (split / 'runs' / f'{cid}-samia').mkdir()
        save_scores(split / 'runs' / f'{cid}-samia', join_states(side))
        rows = s[(s['cell_id'] == cid) & s['attack'].isin(['samia', 'conf'])].assign(cell_id=f'{cid}-samia')
        extra.append(rows)
    s = pd.concat([s[s['attack'] != 'samia'], *extra], ignore_index=True)
    s.to_csv(split / 'summary.csv', index=False)
    d = C.ClaimData(split)
    assert len(d.cells) == len(SEEDS) and all(len(v) == 1 for v in d.merged.values())
    want, got = C.claim_tables(g), C.claim_tables(split)
    for name in C.TABLES:
        pd.testing.assert_frame_equal(got[name].drop(columns=['cells'], errors='ignore'), want[name].drop(columns=['cells'], errors='ignore'), obj=name)
    # a second cell of the seed that scores a shared attack differently is not the same victim attacked the same way: refused
    bad = read_scores(split / 'runs' / f'{d.cells["cell_id"][0]}-samia')
    bad['pruned'].scores['conf'] = bad['pruned'].scores['conf'] + 1.0
    save_scores(split / 'runs' / f'{d.cells["cell_id"][0]}-samia', join_states(bad))
    with pytest.raises(ValueError, match='give conf on the pruned victim different scores'): C.ClaimData(split)
