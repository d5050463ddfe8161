"""One model state's features and attack results cached apart (mia_pruning.states): the same arrays and metrics as features
computed in one call and every attack run in one call, and a cache that computes only what is new."""
from pathlib import Path
import math

import numpy as np
import pytest

from mia_pruning.attacks import run_attacks, shadow_attack_data
from mia_pruning.core import ArtifactCache
from mia_pruning.data import load_dataset, subsample_dataset
from mia_pruning.features import attack_data_for
from mia_pruning.fused import dense_models
from mia_pruning.pruned import pruned_model
from mia_pruning.states import AttackSettings, ModelSet, POPULATION_CAP, state_attacks
from mia_pruning.threat import population_indices, victim_ref_in
from mia_pruning.train import default_train_config

S = AttackSettings(seed=7, sensitivity_m=4, sensitivity_eps=1e-3, n_boot=0, attack_epochs=1, attack_recipe='study',
                   attack_check='none', inference='fast')


@pytest.fixture(scope='module')
def cell(tmp_path_factory):
    "Dense MLPs on 900 digits (victim + 2 shadows) and two pruned releases of them (0.5: the attacked one, 0.8)."
    cache = ArtifactCache(tmp_path_factory.mktemp('models'))
    ds = subsample_dataset(load_dataset('digits'), 900, 7)  # 900 records (a QMIA population over 100): attacks in seconds
    cfg = default_train_config(ds.kind, epochs=2)
    dense = dense_models(ds, 'mlp', seed=7, num_shadows=2, cfg=cfg, cache=cache, device='cpu', progress=False)
    roles = ['victim', 'shadow0', 'shadow1']
    splits = [dense.splits.victim] + list(dense.splits.shadows)
    nets = [dense.victim] + list(dense.shadows)
    def models(pairs):
        return ModelSet(pairs[0][0], [m for m, _ in pairs[1:]], (), [k for _, k in pairs])
    sets = {'dense': models([(m, dense.records[r]['key']) for m, r in zip(nets, roles)])}
    for s in (0.5, 0.8):
        pairs = []
        for m, sp, r in zip(nets, splits, roles):
            pm, info = pruned_model(m, ds, sp, 'mlp', 'l1_unstructured', s, cfg=cfg, seed=7, cache=cache, device='cpu', progress=False)
            pairs.append((pm, info['key'] if 'key' in info else Path(info['cache_entry']).name))
        sets[s] = models(pairs)
    return ds, dense.splits, sets


def _direct(ds, splits, ms, names, other=None, others=None):
    "The records computed in one call each (sensitivity and inputs included) and every attack run in one call."
    pop = population_indices(splits, cap=POPULATION_CAP, seed=S.seed)
    kw = dict(m=S.sensitivity_m, eps=S.sensitivity_eps, seed=S.seed, device='cpu', fast=True)
    v = splits.victim
    idx = np.concatenate([v.train, v.test])
    def recs(m, full):
        sens = full and any(n in ('samia',) for n in names)
        sh = shadow_attack_data(list(m.shadows), ds, splits, extra_references=list(m.refs), population_idx=pop, with_sensitivity=sens, **kw)
        tg = attack_data_for(m.target, ds, v.train, v.test, reference_models=list(m.shadows), ref_in=victim_ref_in(splits, idx),
                             population_idx=pop, with_sensitivity=sens, with_inputs=full and 'qmia' in names, **kw)
        return sh, tg
    sh, tg = recs(ms, True)
    if other is not None:
        o = recs(other, False); sh.with_other(o[0]); tg.with_other(o[1])
    if others:
        rel = {k: recs(o, False) for k, o in others.items()}
        sh.with_others({k: r[0] for k, r in rel.items()}); tg.with_others({k: r[1] for k, r in rel.items()})
    res = run_attacks(names, sh, tg, seed=S.seed, device='cpu', epochs=S.attack_epochs, n_boot=S.n_boot,
                      attack_recipe=S.attack_recipe, attack_check=S.attack_check, epsilon_delta=1.0 / len(v.train))
    return tg, res


def _same_metrics(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y)) for x, y in
                                        ((a[k], b[k]) for k in a))


def _entries(root, kind): return len(list((Path(root) / kind).glob('*/manifest.json')))


def test_state_attacks_equal_features_and_attacks_computed_in_one_call(cell, tmp_path):
    ds, splits, sets = cell
    names = ['loss', 'conf', 'rmia', 'lira_offline', 'samia', 'qmia', 'two_release', 'multi_release']
    others = {'dense': sets['dense'], 'sparsity 0.8': sets[0.8]}
    got = state_attacks(ds, splits, None, sets[0.5], names, S, ArtifactCache(tmp_path), 'cpu', other=sets['dense'], others=others)
    tg, res = _direct(ds, splits, sets[0.5], names, other=sets['dense'], others=others)
    assert got.built == tuple(names) and got.features_built
    assert list(got.arrays.common) == ['is_member', 'labels', 'index', 'py', 'sy']
    for k, a in {'is_member': tg.is_member, 'labels': tg.labels, 'index': tg.index, 'py': tg.py,
                 'sy': tg.sensitivity[np.arange(len(tg)), tg.labels]}.items():
        np.testing.assert_array_equal(got.arrays.common[k], a, err_msg=k)
        assert got.arrays.common[k].dtype == a.dtype, k
    assert list(got.arrays.scores) == names == list(got.metrics)
    for n in names:
        np.testing.assert_array_equal(got.arrays.scores[n], res[n].scores, err_msg=n)
        np.testing.assert_array_equal(got.arrays.preds[n], res[n].is_member_pred, err_msg=n)
        assert _same_metrics(got.metrics[n], res[n].metrics), n
    assert got.seconds.keys() == set(names) and all(t >= 0 for t in got.seconds.values())


def test_a_second_call_builds_nothing_and_an_added_attack_builds_only_itself(cell, tmp_path):
    ds, splits, sets = cell
    cache = ArtifactCache(tmp_path)
    first = state_attacks(ds, splits, None, sets['dense'], ['loss', 'conf'], S, cache, 'cpu')
    again = state_attacks(ds, splits, None, sets['dense'], ['loss', 'conf'], S, cache, 'cpu')
    assert (first.built, first.features_built) == (('loss', 'conf'), True)
    assert (again.built, again.features_built) == ((), False)
    assert again.seconds == first.seconds and again.metrics == first.metrics
    more = state_attacks(ds, splits, None, sets['dense'], ['loss', 'conf', 'gap'], S, cache, 'cpu')
    assert (more.built, more.features_built) == (('gap',), False)
    np.testing.assert_array_equal(more.arrays.scores['conf'], first.arrays.scores['conf'])
    assert 'sy' not in more.arrays.common and _entries(tmp_path, 'state_sensitivity') == 0
    # an attack that reads sensitivity, added later: the sensitivity entry and that attack only
    sens = state_attacks(ds, splits, None, sets['dense'], ['loss', 'conf', 'gap', 'samia'], S, cache, 'cpu')
    assert (sens.built, sens.features_built) == (('samia',), True)
    assert (_entries(tmp_path, 'state_features'), _entries(tmp_path, 'state_sensitivity'), _entries(tmp_path, 'state_attack')) == (1, 1, 4)
    assert list(sens.arrays.common) == ['is_member', 'labels', 'index', 'py', 'sy']
    np.testing.assert_array_equal(sens.arrays.scores['gap'], more.arrays.scores['gap'])
    # another setting of the attacks (not of the features): the attacks again, no features
    other = state_attacks(ds, splits, None, sets['dense'], ['loss'], AttackSettings(**{**S.__dict__, 'n_boot': 5}), cache, 'cpu')
    assert (other.built, other.features_built) == (('loss',), False)


def test_the_other_release_reads_the_features_entry_of_the_state_that_attacks_it(cell, tmp_path):
    ds, splits, sets = cell
    cache = ArtifactCache(tmp_path)
    state_attacks(ds, splits, None, sets['dense'], ['loss'], S, cache, 'cpu')
    assert _entries(tmp_path, 'state_features') == 1
    two = state_attacks(ds, splits, None, sets[0.5], ['loss', 'two_release'], S, cache, 'cpu', other=sets['dense'])
    assert two.built == ('loss', 'two_release') and _entries(tmp_path, 'state_features') == 2  # the pruned state's; dense was there
    multi = state_attacks(ds, splits, None, sets[0.5], ['loss', 'two_release', 'multi_release'], S, cache, 'cpu', other=sets['dense'],
                          others={'dense': sets['dense'], 'sparsity 0.8': sets[0.8]})
    assert (multi.built, _entries(tmp_path, 'state_features')) == (('multi_release',), 3)  # the 0.8 release's records, once
    later = state_attacks(ds, splits, None, sets[0.8], ['loss'], S, cache, 'cpu')
    assert (later.built, later.features_built) == (('loss',), False)  # its records were built as the other release's
    with pytest.raises(ValueError, match='pass `other`'):
        state_attacks(ds, splits, None, sets[0.5], ['two_release'], S, cache, 'cpu')
