"The grid's planner and the cell read the same models: for every preset, every model a cell's states read is a planned job and every planned job is read."
import pytest
from mia_pruning import pipeline as P
from mia_pruning.gridspec import PRESETS, expand_cells


@pytest.mark.parametrize('preset', sorted(PRESETS))
def test_every_planned_model_is_read_and_every_read_model_is_planned(preset):
    for c in expand_cells(preset):
        plan = P.cell_plan(c.resolved)
        planned = [j.key for j in plan.jobs]
        assert len(planned) == len(set(planned)), f'{c.id}: a model planned twice'
        read = {k for by_role in list(plan.states.values()) + list(plan.releases.values()) for k in by_role.values()}
        assert read == set(planned), f'{c.id}: read but not planned {sorted(read - set(planned))[:3]}, planned but not read {sorted(set(planned) - read)[:3]}'
        assert set(plan.states) == set(c.resolved.states)
        assert [j.key for j in P.cell_models(c.params)] == planned  # the grid's path (a params dict) plans the same jobs
        for j in plan.jobs:  # dependencies come first
            assert all(planned.index(a) < planned.index(j.key) for a in j.after), f'{c.id}: {j.key} before what it needs'


def test_run_cell_reads_exactly_the_planned_models(tmp_path):
    params = dict(dataset='digits', arch='mlp', num_shadows=2, epochs=2, attacks='loss,conf', n_boot=0, attack_epochs=1,
                  control='both', prune_method='l1_unstructured', sparsity=0.5, cache_dir=str(tmp_path), device='cpu', threads=1)
    res = P.run_cell(progress=False, **params)
    assert res.provenance['model_jobs'] == [j.key for j in P.cell_models(params)]
    built = {j.key: P.build_model_job(j, tmp_path, threads=1, device='cpu') for j in P.cell_models(params)}
    assert not any(r['built'] for r in built.values())  # the grid's model tasks find every model the cell built: one path


def test_a_resolved_cell_is_read_only_and_keeps_its_id_at_runtime():
    c = P.resolve_cell({'sparsity': 0.5})
    with pytest.raises(TypeError, match='read-only'): c.params['sparsity'] = 0.9
    with pytest.raises(Exception): c.id = 'x'
    r = c.with_runtime(cache_dir='/tmp/elsewhere', threads=1)
    assert r.id == c.id and r.params['cache_dir'] == '/tmp/elsewhere' and r.params['sparsity'] == 0.5
    with pytest.raises(ValueError, match='with_runtime changes only'): c.with_runtime(sparsity=0.9)
    assert P.resolve_cell(c) is c
    import pickle
    assert pickle.loads(pickle.dumps(c)) == c  # it travels to workers
