"An attack added to the registry keeps every existing cell id and is computed alone for a cell already run (issue 23)."
import numpy as np
from mia_pruning import pipeline as P
from mia_pruning.attacks import ATTACKS, Attack
from mia_pruning.gridspec import expand_cells


def _dummy(shadow, target, ctx):  # a threshold attack on the true-class probability, fixed threshold
    return target.py, target.py > 0.5, {}

DUMMY = Attack('dummy_py', _dummy, 'threshold', 'a test', family='threshold')
CELL = dict(dataset='digits', arch='mlp', num_shadows=2, epochs=2, attacks='all', attack_epochs=1, n_boot=0, num_references=0,
            prune_method='l1_unstructured', sparsity=0.5, device='cpu', threads=1)


def test_quick_ids_do_not_move_when_an_attack_is_registered(monkeypatch):
    before = [c.id for c in expand_cells('quick')]
    monkeypatch.setitem(ATTACKS, 'dummy_py', DUMMY)
    after = expand_cells('quick')
    assert [c.id for c in after] == before
    assert all('dummy_py' in c.resolved.attacks for c in after)  # ... and every 'all' cell now runs it


def test_a_cached_cell_computes_only_the_new_attack(tmp_path, monkeypatch):
    first = P.run_cell(progress=False, cache_dir=str(tmp_path), **CELL)
    assert 'dummy_py' not in {r['attack'] for r in first.rows}
    monkeypatch.setitem(ATTACKS, 'dummy_py', DUMMY)
    second = P.run_cell(progress=False, cache_dir=str(tmp_path), **CELL)
    assert second.provenance['cell_id'] == first.provenance['cell_id']
    for state in ('dense', 'pruned'):
        assert second.provenance['attack_states'][state] == {'cached': False, 'built': ['dummy_py']}, state
    assert not any(second.provenance['models'][k]['built'] for k in ('dense_model', 'pruned_model'))
    new = [r for r in second.rows if r['attack'] == 'dummy_py']
    assert len(new) == 2 and {r['model_state'] for r in new} == {'dense', 'pruned'}
    old = {(r['model_state'], r['attack']): r for r in first.rows}
    for r in second.rows:  # every attack already there: the same numbers, read back from the cache
        if r['attack'] != 'dummy_py': assert r['auc'] == old[(r['model_state'], r['attack'])]['auc']
    np.testing.assert_array_equal(second.states['pruned'].scores['dummy_py'], second.states['pruned'].common['py'])
