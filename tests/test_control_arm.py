"The control arm (issue 26): the dense models fine-tuned with the pruned arm's recipe and no pruning, and its matched-steps variant."
import math
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
from mia_pruning import pipeline as P
from mia_pruning.core import load_json
from mia_pruning.prune import state_hash
from mia_pruning.pruned import load_pruned
from mia_pruning.models import build_model
from mia_pruning.core import load_checkpoint

TINY = dict(dataset='digits', arch='mlp', num_shadows=1, epochs=6, attacks='loss,conf,two_release', n_boot=0, attack_epochs=1,
            threads=1, device='cpu')
FIT = ('train_acc', 'test_acc', 'train_test_gap', 'epochs_run', 'best_epoch', 'epochs_cap', 'cap_reached')


def test_cell_ids_without_the_option_are_unchanged():
    # computed before the control option existed: a parameter added later stays out of the id at its default
    tiny = dict(dataset='digits', arch='mlp', num_shadows=1, epochs=2, attacks='loss,conf', n_boot=0, attack_epochs=1)
    assert P.cell_id(tiny) == 'digits-mlp-l1_unstructured-0.7-none-s7-eac5267f42'
    assert P.cell_id({}) == 'digits-cnn-l1_unstructured-0.7-none-s7-edf1add073'
    assert P.cell_id({**tiny, 'control': 'none'}) == P.cell_id(tiny)
    assert len({P.cell_id({**tiny, 'control': c}) for c in P.CONTROLS}) == len(P.CONTROLS)
    assert [j.key for j in P.cell_models(tiny)] == ['dense-victim-digits-mlp-s7-507808ca1107', 'dense-shadow0-digits-mlp-s7-576334c99338',
                                                    'pruned-victim-digits-mlp-s7-e792b588958c', 'pruned-shadow0-digits-mlp-s7-c4e1f0b070ff']


def test_validation():
    with pytest.raises(ValueError, match='control must be one of'): P.validate_params({'control': 'pruned'})
    with pytest.raises(ValueError, match="use control='finetune'"): P.validate_params({'control': 'matched', 'defense': 'dpsgd', 'arch': 'mlp'})
    P.validate_params({'control': 'finetune', 'defense': 'dpsgd', 'arch': 'mlp'})  # the fine-tune control takes DP-SGD as the pruned arm does


def test_fit_diagnostics_known_answers():
    h = [{}] * 10
    assert P.fit_diagnostics(0.9, 0.8, h, 4, 50, 5)['cap_reached'] is False     # epoch 9 - best 4 >= 5: stopped early
    f = P.fit_diagnostics(0.9, 0.8, h, 7, 10, 5)                                 # ran to the cap of 10
    assert (f['cap_reached'], f['epochs_run'], f['best_epoch'], f['epochs_cap']) == (True, 10, 7, 10)
    assert math.isclose(f['train_test_gap'], 0.1)
    assert P.fit_diagnostics(0.9, 0.8, h, 0, 10, 0)['cap_reached'] is True       # no patience: never stops early


def test_model_jobs_plan_the_controls():
    jobs = P.cell_models({**TINY, 'control': 'both'})
    kinds = [j.kind for j in jobs]
    assert kinds == ['dense'] * 2 + ['pruned'] * 2 + ['control'] * 2 + ['control_matched'] * 2
    by = {(j.kind, j.role): j for j in jobs}
    assert by[('control_matched', 'victim')].after == (by[('dense', 'victim')].key, by[('pruned', 'victim')].key)
    assert by[('control', 'shadow0')].after == (by[('dense', 'shadow0')].key,)
    # the fine-tune control does not depend on the pruning: cells of two methods share it; the matched one follows its twin
    other = {(j.kind, j.role): j.key for j in P.cell_models({**TINY, 'control': 'both', 'prune_method': 'global_unstructured'})}
    assert other[('control', 'victim')] == by[('control', 'victim')].key
    assert other[('control_matched', 'victim')] != by[('control_matched', 'victim')].key


def test_cell_with_both_controls(tmp_path):
    d = str(tmp_path / 'cache')
    params = {**TINY, 'control': 'both', 'cache_dir': d}
    built = [P.build_model_job(j, d, threads=1, device='cpu') for j in P.cell_models(params)]
    assert all(b['built'] for b in built)
    res = P.run_cell(progress=False, out_dir=tmp_path / 'run', **params)
    use = res.provenance['models']
    assert {k: (v['built'], v['found']) for k, v in use.items()} == {'dense_model': (0, 2), 'pruned_model': (0, 2), 'control_model': (0, 4)}
    rows = pd.DataFrame(load_json(tmp_path / 'run' / 'rows.json'))
    assert list(dict.fromkeys(rows['model_state'])) == ['dense', 'pruned', 'control', 'control_matched']
    assert rows[list(FIT)].notna().all().all()
    fit = rows.drop_duplicates('model_state').set_index('model_state')
    assert np.allclose(fit['train_test_gap'], fit['train_acc'] - fit['test_acc'])
    # nothing pruned in either control; the pruned victim is at its sparsity
    assert fit.loc['control', 'measured_sparsity'] == 0.0 and fit.loc['control_matched', 'measured_sparsity'] == 0.0
    assert abs(fit.loc['pruned', 'measured_sparsity'] - 0.7) < 0.01
    # caps: dense 6 epochs, fine-tuning 6 // 2 = 3 for the pruned model and the fine-tune control
    assert (fit.loc['dense', 'epochs_cap'], fit.loc['pruned', 'epochs_cap'], fit.loc['control', 'epochs_cap']) == (6, 3, 3)
    # matched: exactly as many epochs as the pruned twin's released weights saw, no early stopping, the last epoch kept
    pv = res.provenance['pruned_victim']
    assert fit.loc['control_matched', 'epochs_run'] == pv['best_epoch'] + 1 == fit.loc['pruned', 'best_epoch'] + 1
    assert fit.loc['control_matched', 'epochs_cap'] == fit.loc['control_matched', 'epochs_run']
    assert bool(fit.loc['control_matched', 'cap_reached']) and fit.loc['control_matched', 'best_epoch'] == fit.loc['control_matched', 'epochs_run'] - 1
    # the control victim is the dense victim fine-tuned: other weights, no zeros from pruning
    dense_entry = Path(d) / 'dense_model' / res.provenance['cache_keys']['dense'][0]
    dense = build_model('mlp', 10, (64,)); dense.load_state_dict(load_checkpoint(dense_entry / 'model.pt'))
    for k in ('control', 'control_matched'):
        m, _ = load_pruned(Path(res.provenance[f'{k}_victim']['cache_entry']) / 'model.pt', 'mlp', 10, (64,))
        assert state_hash(m) != state_hash(dense)
        w = [p for n, p in m.named_parameters() if n.endswith('weight')]
        assert sum(int((p == 0).sum()) for p in w) == 0
    # every state scored the same victim samples; two_release is a treated state's (dense + treated releases)
    sc = res.scores
    for k in ('pruned', 'control', 'control_matched'):
        assert np.array_equal(sc[f'{k}__index'], sc['dense__index']) and np.array_equal(sc[f'{k}__is_member'], sc['dense__is_member'])
        assert f'{k}__score__two_release' in sc
    assert 'dense__score__two_release' not in sc
    assert not np.array_equal(sc['control__py'], sc['dense__py'])
    # a cell without the control shares every dense and pruned model and attack state, and has only its two states
    plain = P.run_cell(progress=False, **{**TINY, 'cache_dir': d})
    assert {r['model_state'] for r in plain.rows} == {'dense', 'pruned'}
    assert plain.provenance['attack_states'] == {'dense': {'cached': True, 'built': []}, 'pruned': {'cached': True, 'built': []}}
    assert plain.metrics['pruned/test_acc'] == res.metrics['pruned/test_acc']


def test_decomposition_adds_up_per_seed(tmp_path):
    "fine-tuning (control - dense) + pruning (pruned - control) == total (pruned - dense), seed by seed, on a constructed grid."
    from mia_pruning import claims as C
    g = C.make_synthetic_grid(tmp_path / 'ctl', seeds=(1, 2, 3), shift=0.1, control=0.04)
    data = C.ClaimData(g)
    for cid in data.cells['cell_id']:
        for a in ('conf', 'loss', 'samia'):
            ft, pr, tot = (data.auc_change((cid, x, a), (cid, y, a)) for x, y in (('dense', 'control'), ('control', 'pruned'), ('dense', 'pruned')))
            assert math.isclose(ft['diff'] + pr['diff'], tot['diff'], abs_tol=1e-12)
            assert ft['diff'] > 0 and pr['diff'] > 0   # members gained 0.04 from fine-tuning and 0.06 more from pruning
    dec = C.decomposition_table(data)
    assert set(dec['component']) == {'fine-tuning', 'pruning', 'total'} and set(dec['control']) == {'control'}
    risk = C.risk_table(data).set_index('attack')
    tot = dec[dec['component'] == 'total'].set_index('attack')
    assert np.allclose(tot.loc[risk.index, 'change'], risk['change'], atol=1e-12)   # the total is claim (a)'s change
    piv = dec.pivot(index='attack', columns='component', values='change')
    # each part is combined with its own random-effects weights, so the combined parts add up only nearly (the per-seed ones exactly)
    assert np.allclose(piv['fine-tuning'] + piv['pruning'], piv['total'], atol=0.002)
    for comp, d in dec.groupby('component'):  # the per_seed column is what was combined, in seed order
        assert d['per_seed'].str.split().map(len).eq(3).all()
    # from summary.csv alone (a fresh clone without run folders): the same per-seed changes (their errors, and so the weights, are unpaired bounds there)
    import shutil; shutil.rmtree(g / 'runs')
    dec2 = C.decomposition_table(C.ClaimData(g))
    assert dec2['per_seed'].tolist() == dec['per_seed'].tolist()
    assert {'epochs_run_control', 'train_acc_control', 'test_acc_pruned'} - set(dec2) == {'epochs_run_control'}  # no fit diagnostics in this synthetic summary
    v = C.claim_tables(g)['verdicts'].set_index('claim')
    assert v.loc['f:control:conf', 'verdict'] == 'raised'


def test_no_control_arm_says_not_available(tmp_path):
    from mia_pruning import claims as C
    t = C.claim_tables(C.make_synthetic_grid(tmp_path / 'plain', seeds=(1, 2, 3)))
    assert t['decomposition'].empty
    f = t['verdicts'].set_index('claim').loc['f']
    assert f['verdict'] == 'not tested' and 'not available' in f['detail']


def test_the_report_knows_every_model_state_a_cell_writes():
    from mia_pruning.pipeline import ALL_STATES
    from mia_pruning.report import MODEL_STATES
    assert tuple(MODEL_STATES) == tuple(ALL_STATES)

def test_the_claims_know_the_baseline_states_the_pipeline_writes():
    "claims stays torch-free, so it spells the baseline states itself: they must be the pipeline's."
    from mia_pruning import claims
    assert claims.BASELINE_STATES == P.BASELINE_STATES and claims.CONTROL_STATES == P.CONTROL_STATES['both']
