"The cost estimate of a grid (mia_pruning.estimate): counts match the grid's own plan, estimates scale, the calibration is cached per machine."
import re
import pytest
from mia_pruning import estimate as E
from mia_pruning.grid import plan_tasks, expand_cells

SPEC = {'name': 'est', 'axes': {'sparsity': [0.5, 0.9], 'defense': ['none', 'ppb']},
        'fixed': {'dataset': 'digits', 'arch': 'mlp', 'num_shadows': 2, 'epochs': 2, 'attack_epochs': 1,
                  'attacks': 'gap,loss,nn,samia', 'n_boot': 0, 'num_references': 0}}

@pytest.fixture(scope='module')
def calib(tmp_path_factory):
    "One calibration cache shared by the tests (tiny units)."
    return tmp_path_factory.mktemp('calib')

def _est(tmp_path, calib, spec=SPEC, **kw):
    return E.estimate_grid(spec, out_dir=tmp_path / 'out', cache_dir=tmp_path / 'cache', workers=2, threads=1, size='tiny',
                           calibration_cache=calib, **kw)

def test_model_counts_match_plan_tasks(tmp_path):
    plan = E.plan_grid(SPEC, out_dir=tmp_path / 'out', cache_dir=tmp_path / 'cache', workers=2, threads=1)
    cells = expand_cells(SPEC)
    tasks = plan_tasks([{'cell_id': c.id, 'params': {**c.params, 'cache_dir': str(tmp_path / 'cache')}} for c in cells])
    models = [t for t in tasks if t.info['kind'] == 'model']
    assert sorted(t.key for t in models) == sorted(f'model:{k}' for k in plan.models)
    by = {}
    for t in models:
        k = f"{t.info['model_kind']} {t.info['role'].rstrip('0123456789')}"; by[k] = by.get(k, 0) + 1
    assert {k: v['models'] for k, v in plan.model_counts().items()} == by
    assert by == {'dense victim': 1, 'dense shadow': 2, 'pruned victim': 4, 'pruned shadow': 4}  # ppb: the shadows stay undefended
    # 4 pruned states and the one dense state the cells share
    assert plan.attack_fits() == {'total': 20, 'learned': 10, 'other': 10, 'by_attack': {'gap': 5, 'nn': 5, 'samia': 5, 'loss': 5}}

def test_estimate_positive_and_grows(tmp_path, calib):
    base = _est(tmp_path, calib)
    assert base.wall > 0 and all(v >= 0 for v in base.stages.values())
    more_epochs = _est(tmp_path, calib, spec={**SPEC, 'fixed': {**SPEC['fixed'], 'epochs': 8, 'attack_epochs': 4}})
    more_seeds = _est(tmp_path, calib, spec={**SPEC, 'axes': {**SPEC['axes'], 'seed': [1, 2, 3]}})
    assert more_epochs.wall > base.wall and more_epochs.stages['dense models'] > base.stages['dense models']
    assert more_seeds.wall > base.wall and len(more_seeds.plan.models) == 3 * len(base.plan.models)

def test_calibration_cached_per_machine(tmp_path, monkeypatch):
    keys = ['boot', 'model|mlp|(1, 8, 8)|10|False']
    _, first = E.calibrate(keys, 1, tmp_path, 'tiny')
    _, second = E.calibrate(keys, 1, tmp_path, 'tiny')
    assert first == keys and second == []
    calls = []
    monkeypatch.setattr(E, '_measure', lambda k, z: calls.append(k) or 0.0)
    E.calibrate(['boot'], 1, tmp_path, 'tiny'); assert calls == []
    monkeypatch.setattr(E.socket, 'gethostname', lambda: 'another-host')  # another machine: its own file, measured anew
    assert E.calibration_file(1, tmp_path) != E.calibration_file(2, tmp_path)
    E.calibrate(['boot'], 1, tmp_path, 'tiny'); assert calls == ['boot']

def test_cached_models_cost_nothing(tmp_path, calib, monkeypatch):
    full, real = _est(tmp_path, calib), E.plan_grid
    def all_cached(*a, **k):
        p = real(*a, **k); p.cached = set(p.models); return p
    monkeypatch.setattr(E, 'plan_grid', all_cached)
    cached = _est(tmp_path, calib)
    assert cached.stages['dense models'] == 0 == cached.stages['pruned models'] and cached.wall < full.wall

def test_describe_plan_text(tmp_path, calib):
    text = E.describe_plan(SPEC, out_dir=tmp_path / 'out', cache_dir=tmp_path / 'cache', workers=2, threads=1, size='tiny',
                           calibration_cache=calib)
    assert '11 distinct model(s) to train (0 already in the cache)' in text
    assert '20 attack fit(s) (10 learned' in text  # 4 pruned states and the dense state they share
    assert re.search(r'estimated wall time: \d+ (s|min|h)', text)

def test_cached_attack_results_are_not_counted(tmp_path):
    "Fits whose results the cache holds cost nothing: none after the cell ran, and only the new one when an attack is added."
    from mia_pruning import pipeline as P
    fixed = {k: v for k, v in SPEC['fixed'].items()} | {'attacks': 'gap,loss', 'prune_method': 'l1_unstructured', 'sparsity': 0.5}
    spec, cache = {'name': 'cached', 'fixed': fixed}, tmp_path / 'cache'
    plan = lambda s: E.plan_grid(s, out_dir=tmp_path / 'out', cache_dir=cache, workers=1, threads=1)
    assert plan(spec).attack_fits()['by_attack'] == {'gap': 2, 'loss': 2}  # the dense and the pruned state
    (c,) = expand_cells(spec)
    for job in P.cell_models(c.resolved): P.build_model_job(job, cache, threads=1, device='cpu')  # as the grid's model tasks
    P.run_cell(progress=False, **c.resolved.with_runtime(cache_dir=str(cache), device='cpu', threads=1).params)
    done = plan(spec)
    assert done.cached == set(done.models) and done.attack_fits()['total'] == 0
    assert E.state_seconds(done.cells[0][1], 'pruned', {}, names=[]) == {'features': 0.0, 'learned': 0.0, 'other': 0.0, 'bootstrap': 0.0}
    grown = plan({'name': 'cached', 'fixed': fixed | {'attacks': 'gap,loss,conf'}})
    assert grown.attack_fits()['by_attack'] == {'conf': 2}
