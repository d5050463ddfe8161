"One grid cell end to end: defenses, adversary variants, run folders, determinism and the validation errors."
import math

import numpy as np
import pytest

from mia_pruning.core import load_json
from mia_pruning.pipeline import CELL_DEFAULTS, cell_id, is_complete, run_cell, validate_params, write_run

TINY = dict(dataset='digits', arch='mlp', epochs=3, num_shadows=2, attacks='gap,conf,loss', n_boot=0, num_references=0,
            sparsity=0.5, progress=False)


@pytest.fixture
def tiny(tmp_path):
    return TINY | {'cache_dir': str(tmp_path / 'cache')}


def test_rows_cover_every_state_and_attack(tiny):
    res = run_cell(**tiny)
    assert {(r['model_state'], r['attack']) for r in res.rows} == {(s, a) for s in ('dense', 'pruned') for a in ('gap', 'conf', 'loss')}
    for r in res.rows:
        assert 0 <= r['auc'] <= 1 and 0 <= r['attack_acc'] <= 1 and math.isfinite(r['test_acc'])
    assert abs(res.metrics['pruned/measured_sparsity'] - 0.5) < 0.02
    assert res.metrics['dense/measured_sparsity'] == 0.0


def test_same_cell_twice_gives_byte_identical_metrics(tmp_path):
    a = write_run(tmp_path / 'a', run_cell(**TINY, cache_dir=str(tmp_path / 'c1')))
    b = write_run(tmp_path / 'b', run_cell(**TINY, cache_dir=str(tmp_path / 'c2')))
    assert (a / 'metrics.json').read_bytes() == (b / 'metrics.json').read_bytes()
    assert (a / 'rows.json').read_bytes() == (b / 'rows.json').read_bytes()


def test_run_folder_is_self_describing(tiny, tmp_path):
    res = run_cell(**tiny, out_dir=tmp_path / 'run')
    run = tmp_path / 'run'
    assert is_complete(run, res.provenance['cell_id'])
    data = load_json(run / 'params.json')['provenance']['data']
    assert data['name'] == 'digits' and data['content_hash'] and data['source']
    write_run(run, res)                                  # rewritten, not certified: not complete until finish_run
    assert not is_complete(run, res.provenance['cell_id'])
    params = load_json(run / 'params.json')
    assert params['params']['sparsity'] == 0.5 and params['provenance']['env']['torch']
    assert set(params['provenance']['split_hashes']) == {'victim', 'shadow0', 'shadow1'}
    scores = np.load(run / 'scores.npz')
    assert scores['pruned__score__conf'].shape == scores['pruned__is_member'].shape


def test_ppb_adaptive_and_dense_shadow_variants(tiny):
    base = run_cell(**tiny)
    ppb = run_cell(**tiny | {'defense': 'ppb'})
    assert ppb.rows[0]['defense_param'] == 4.0
    assert ppb.provenance['cache_keys']['pruned'][0] != base.provenance['cache_keys']['pruned'][0]
    assert ppb.provenance['cache_keys']['pruned'][1:] == base.provenance['cache_keys']['pruned'][1:]  # shadows undefended
    adaptive = run_cell(**tiny | {'defense': 'ppb', 'adaptive': True})
    assert adaptive.provenance['cache_keys']['pruned'][1:] != base.provenance['cache_keys']['pruned'][1:]
    dense_sh = run_cell(**tiny | {'dense_shadows': True})
    assert dense_sh.provenance['cache_keys']['pruned'][1:] == base.provenance['cache_keys']['dense'][1:]
    other = run_cell(**tiny | {'shadow_prune_method': 'global_unstructured', 'shadow_sparsity': 0.7})
    assert other.rows[0]['shadow_prune_method'] == 'global_unstructured' and other.rows[0]['shadow_sparsity'] == 0.7
    # the dense state is shared: its attacks were computed once and reused
    for r in (ppb, adaptive, other):
        assert r.metrics['dense/conf/auc'] == base.metrics['dense/conf/auc']


def test_dpsgd_cell_reports_epsilon(tiny):
    res = run_cell(**tiny | {'defense': 'dpsgd', 'defense_param': 1.0})
    pruned = [r for r in res.rows if r['model_state'] == 'pruned']
    eps = pruned[0]['epsilon']
    assert math.isfinite(eps) and eps > 0
    assert all(math.isnan(r['epsilon']) for r in res.rows if r['model_state'] == 'dense')  # the dense victim has no accountant
    for r in pruned:  # an audit's lower bound can never exceed what the accountant guarantees (same delta)
        assert r['empirical_epsilon_delta'] == pytest.approx(res.provenance['pruned_victim']['delta'])
        assert r['empirical_epsilon'] <= eps, (r['attack'], r['empirical_epsilon'], eps)
    assert abs(res.metrics['pruned/measured_sparsity'] - 0.5) < 0.02


def test_structured_cell_on_cnn_with_reference_attacks(tmp_path):
    res = run_cell(**TINY | {'arch': 'cnn', 'prune_method': 'l1_structured', 'attacks': 'lira_offline,lira_online,rmia',
                             'num_references': 4, 'cache_dir': str(tmp_path)})
    assert {r['attack'] for r in res.rows} == {'lira_offline', 'lira_online', 'rmia'}
    assert all(0 <= r['auc'] <= 1 for r in res.rows)


def test_cuda_on_a_machine_without_it_is_a_value_error_naming_it(tmp_path):
    import torch
    if torch.cuda.is_available(): pytest.skip('this machine has CUDA')
    with pytest.raises(ValueError, match="device 'cuda'"):
        run_cell(device='cuda', cache_dir=str(tmp_path / 'cache'))
    assert not (tmp_path / 'cache').exists()


@pytest.mark.parametrize('bad,match', [
    ({'datset': 'digits'}, 'unknown cell parameter'),
    ({'dataset': 'mnist'}, 'unknown dataset'),
    ({'arch': 'resnet50'}, 'unknown arch'),
    ({'prune_method': 'random'}, 'unknown prune method'),
    ({'defense': 'dropout'}, 'unknown defense'),
    ({'attacks': 'conf,foo'}, 'unknown attack'),
    ({'sparsity': 1.0}, 'sparsity'),
    ({'sparsity': -0.1}, 'sparsity'),
    ({'sparsity': '0.5'}, 'must be of type float'),
    ({'num_shadows': 0}, r'num_shadows must be in \[1, 256\]'),
    ({'seed': -1}, r'seed must be in \[0, 4294967295\]'),
    ({'seed': 2**32}, r'seed must be in \[0, 4294967295\]'),
    ({'threads': 100_000}, 'threads must be in'),
    ({'n_boot': 10**7}, 'n_boot must be in'),
    ({'num_references': 4096}, 'num_references must be in'),
    ({'subsample': -5}, 'subsample must be in'),
    ({'structured_bn': 'drop'}, 'structured_bn must be one of'),
    ({'inference': 'compiled'}, r"inference must be one of \('fast', 'plain'\), got 'compiled'"),
    ({'defense_param': 4.0}, "defense 'none' takes no defense_param"),
    ({'device': 'cuda:abc'}, "unknown device 'cuda:abc'"),
    ({'attacks': 'two_release', 'dense_shadows': True}, 'two_release needs shadows that are dense \+ pruned pairs'),
    ({'adaptive': 1}, 'must be of type bool'),
    ({'arch': 'mlp', 'prune_method': 'slimming'}, 'BatchNorm'),
    ({'arch': 'column_fc', 'dataset': 'purchase100', 'prune_method': 'l2_structured'}, 'Conv2d'),
    ({'defense': 'ppb', 'defense_param': -2.0}, 'defense_param'),
    ({'defense': 'label_smoothing', 'defense_param': 1.5}, 'smoothing'),
    ({'num_references': 3}, 'even'),
    ({'attacks': 'lira_online', 'num_references': 0}, 'num_references >= 4'),
    ({'attacks': 'lira_online', 'num_references': 2}, 'num_references >= 4'),
    ({'device': 'tpu'}, 'unknown device'),
])
def test_bad_cells_fail_before_any_work(bad, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        run_cell(**bad, cache_dir=str(tmp_path / 'cache'))
    assert not (tmp_path / 'cache').exists()


def test_cell_id_ignores_where_and_how_fast():
    assert cell_id({'seed': 1, 'threads': 2, 'device': 'cpu'}) == cell_id({'seed': 1})
    assert cell_id({'seed': 1}) != cell_id({'seed': 2})
    assert set(validate_params({})) == set(CELL_DEFAULTS)


def test_subsample_draws_a_stratified_subset_before_the_splits_and_records_it(tmp_path):
    res = run_cell(**TINY | {'subsample': 600, 'attacks': 'conf', 'cache_dir': str(tmp_path)})
    v, shadows = res.provenance['split_sizes']['victim'], res.provenance['split_sizes']['shadows']
    assert sum(v) == 300 and all(sum(s) == 300 for s in shadows)   # half of the 600 each side
    data = res.provenance['data']
    assert data['n'] == 600 and data['source']['subsample'] == 600 and data['content_hash']
    full = run_cell(**TINY | {'attacks': 'conf', 'cache_dir': str(tmp_path)})
    assert full.provenance['data']['content_hash'] != data['content_hash']
    tiny = {k: v for k, v in TINY.items() if k != 'progress'}
    assert cell_id(tiny | {'subsample': 600}) != cell_id(tiny)


def test_two_release_runs_on_the_pruned_state_with_dense_and_pruned_shadow_pairs(tmp_path):
    res = run_cell(**TINY | {'attacks': 'loss,two_release', 'cache_dir': str(tmp_path)})
    got = {(r['model_state'], r['attack']) for r in res.rows}
    assert got == {('dense', 'loss'), ('pruned', 'loss'), ('pruned', 'two_release')}
    assert res.scores['pruned__score__two_release'].shape == res.scores['pruned__is_member'].shape
    skipped = run_cell(**TINY | {'attacks': 'all', 'dense_shadows': True, 'cache_dir': str(tmp_path)}).provenance['skipped_attacks']
    assert 'two_release' in skipped


# ---------------------------------------------------------------- the models of a cell as jobs (model-level scheduling)
from mia_pruning.pipeline import cell_models, build_model_job, model_job_done


@pytest.mark.parametrize('variant, n_dense, n_pruned', [
    ({'defense': 'ppb', 'adaptive': True}, 3, 3),                                    # defended shadows: the adaptive adversary's
    ({'defense': 'ppb', 'dense_shadows': True}, 3, 1),                               # no pruned shadows
    ({'shadow_prune_method': 'global_unstructured', 'shadow_sparsity': 0.7}, 3, 3),  # the adversary's own assumption
    ({'arch': 'cnn', 'prune_method': 'l1_structured', 'structured_bn': 'zero', 'attacks': 'loss,lira_online',
      'num_references': 4}, 7, 7),                                                   # references, dense and pruned
])
def test_model_jobs_train_exactly_what_the_cell_then_finds(variant, n_dense, n_pruned, tmp_path):
    "Every model job trained first: run_cell trains nothing, and the cache holds exactly the plan's models."
    p = TINY | {'cache_dir': str(tmp_path)} | variant
    jobs = cell_models({k: v for k, v in p.items() if k != 'progress'})
    assert [sum(j.kind == k for j in jobs) for k in ('dense', 'pruned')] == [n_dense, n_pruned]
    assert len({j.key for j in jobs}) == len(jobs) and all(j.after == () for j in jobs if j.kind == 'dense')
    by_key = {j.key: j for j in jobs}
    assert all(by_key[j.after[0]].role == j.role and by_key[j.after[0]].kind == 'dense' for j in jobs if j.kind == 'pruned')
    assert not any(model_job_done(j, tmp_path) for j in jobs)
    res = [build_model_job(j, tmp_path, threads=1, device='cpu') for j in jobs]
    assert all(r['built'] for r in res) and all(model_job_done(j, tmp_path) for j in jobs)
    cell = run_cell(**p)
    m = cell.provenance['models']
    assert (m['dense_model']['built'], m['pruned_model']['built']) == (0, 0), m
    assert (m['dense_model']['found'], m['pruned_model']['found']) == (n_dense, n_pruned)
    assert sorted(m['pruned_model']['found_keys']) == sorted(r['entry'] for r in res if r['kind'] == 'pruned')
    assert len(list((tmp_path / 'pruned_model').iterdir())) == n_pruned


def test_model_job_identity_tracks_what_changes_a_model():
    "Two cells share a job exactly when its model is the same; a setting that cannot change it does not split it."
    plain = {k: v for k, v in TINY.items() if k != 'progress'}
    keys = lambda **kw: {(j.kind, j.role): j.key for j in cell_models(plain | kw)}
    base = keys()
    assert keys(attacks='gap,conf', n_boot=50, attack_epochs=2) == base                 # attacks: no model changes
    assert keys(structured_bn='zero') == base                                           # not a filter method: no effect
    ppb = keys(defense='ppb')
    assert ppb[('pruned', 'victim')] != base[('pruned', 'victim')] and ppb[('pruned', 'shadow0')] == base[('pruned', 'shadow0')]
    assert {k: v for k, v in keys(sparsity=0.7).items() if k[0] == 'dense'} == {k: v for k, v in base.items() if k[0] == 'dense'}
    assert all(keys(num_shadows=3)[k] != v for k, v in base.items())                    # other splits: every model differs
    assert keys(seed=8)[('dense', 'victim')] != base[('dense', 'victim')]
    assert keys(data_root='/elsewhere')[('dense', 'victim')] != base[('dense', 'victim')]
    with pytest.raises(ValueError, match='unknown prune method'): cell_models(plain | {'prune_method': 'magnitude'})


def test_inference_mode_is_a_recorded_option_with_its_own_attack_states(tmp_path, monkeypatch):
    "inference='plain' queries the models themselves (the study's code), 'fast' an inference copy: same models, own attack states, float-level differences."
    import mia_pruning.features as features
    copies, make = [], features.inference_model
    monkeypatch.setattr(features, 'inference_model', lambda *a, **k: copies.append(1) or make(*a, **k))
    cell = dict(dataset='digits', arch='cnn', epochs=2, num_shadows=1, attacks='gap,conf,loss', n_boot=0, num_references=0,
                sparsity=0.5, cache_dir=str(tmp_path / 'cache'))
    assert cell_id(cell | {'inference': 'fast'}) == cell_id(cell)  # the default stays out of the id: earlier cells keep theirs
    assert cell_id(cell | {'inference': 'plain'}) != cell_id(cell)
    fast = run_cell(**cell, progress=False)
    n_fast = len(copies)
    plain = run_cell(**cell | {'inference': 'plain'}, progress=False)
    assert n_fast > 0 and len(copies) == n_fast  # 'plain' queried no inference copy
    assert fast.provenance['cache_keys'] == plain.provenance['cache_keys']  # the same models, trained once
    assert plain.provenance['attack_states']['dense']['cached'] is False  # not the fast run's attack state
    assert fast.params['inference'] == 'fast' and plain.params['inference'] == 'plain'
    f, q = ({(r['model_state'], r['attack']): r for r in res.rows} for res in (fast, plain))
    assert f.keys() == q.keys()
    for k in f:
        assert f[k]['test_acc'] == q[k]['test_acc']
        assert abs(f[k]['auc'] - q[k]['auc']) < 1e-4, (k, f[k]['auc'], q[k]['auc'])
