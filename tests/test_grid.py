"""Grid specs, cell ids, the folder lock, resume, failures, collect, SIGKILL recovery and local vs Dask execution.

Most tests drive the real scheduling (papermill, kernels, worker processes) with a stand-in template that writes a
run folder in a few lines; the last test runs the real experiment notebook on two tiny cells with both executors.
"""
import json, os, signal, socket, subprocess, sys, textwrap, time
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from mia_pruning import grid as G
from mia_pruning.gridlock import proc_start
from mia_pruning.runs import is_complete, verify_run, finish_run
from mia_pruning.core import save_json
from mia_pruning.pipeline import CELL_DEFAULTS
from mia_pruning import pipeline as P, runs as R

BASE = {'dataset': 'digits', 'arch': 'mlp'}


# ---------------------------------------------------------------- a stand-in template (no training)
STUB_BODY = '''
import json, os, pathlib, time
params = {k: v for k, v in dict(globals()).items() if k in CELL_KEYS}
log = os.environ.get('MIA_TEST_LOG')
name = pathlib.Path(out_dir).name if out_dir else ''
if log:
    with open(log, 'a') as f: f.write(f'start {name} {os.getpid()}\\n')
time.sleep(float(os.environ.get('MIA_TEST_SLEEP', '0')))
if seed == FAIL_SEED: raise RuntimeError('this cell was asked to fail')
rows = [dict(params, model_state=s, attack=a, attack_acc=0.5 + sparsity / 10 + (s == 'pruned') / 100, auc=0.6,
             test_acc=0.9, measured_sparsity=0.0 if s == 'dense' else sparsity)
        for s in ('dense', 'pruned') for a in ('conf', 'loss')]
if out_dir:
    d = pathlib.Path(out_dir)
    env = {v: os.environ.get(v) for v in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS')}
    (d / 'params.json').write_text(json.dumps({'params': params, 'provenance': {'env': env, 'cwd': os.getcwd(), 'cell_id': d.name}}))
    (d / 'rows.json').write_text(json.dumps(rows))
    import numpy as np
    from mia_pruning.pipeline import cell_attacks
    from mia_pruning.runs import score_key
    held = {score_key(st, 'score', a): np.ones(2) for st, names in cell_attacks(params).items() for a in names}  # what a real run holds
    np.savez(d / 'scores.npz', dense__py=np.ones(2), **held)
    (d / '.metrics.tmp').write_text(json.dumps({'pruned/conf/attack_acc': rows[2]['attack_acc']}))
    os.replace(d / '.metrics.tmp', d / 'metrics.json')
if log:
    with open(log, 'a') as f: f.write(f'done {name} {os.getpid()}\\n')
'''


def stub_template(path, fail_seed=-1):
    "A template with the real parameters cell that writes a run folder without training."
    nb = nbformat.v4.new_notebook(metadata={'kernelspec': {'name': 'python3', 'display_name': 'python3', 'language': 'python'}})
    p = nbformat.v4.new_code_cell('\n'.join(f'{k} = {v!r}' for k, v in {**CELL_DEFAULTS, 'out_dir': ''}.items()))
    p.metadata['tags'] = ['parameters']
    body = STUB_BODY.replace('CELL_KEYS', repr(sorted(CELL_DEFAULTS))).replace('FAIL_SEED', str(fail_seed))
    nb.cells = [p, nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, str(path))
    return Path(path)


def read_log(path):
    if not Path(path).exists(): return []
    return [l.split() for l in Path(path).read_text().splitlines() if l.strip()]


@pytest.fixture
def stub(tmp_path, monkeypatch):
    monkeypatch.setenv('MIA_TEST_LOG', str(tmp_path / 'log.txt'))
    monkeypatch.setenv('MIA_PRUNING_CACHE', str(tmp_path / 'cache'))
    return stub_template(tmp_path / 'stub.ipynb', fail_seed=13)


# ---------------------------------------------------------------- specs and cells
@pytest.mark.parametrize('spec, msg', [
    ({**{'name': 'g'}, 'fixed': BASE, 'axes': {'sparsty': [0.5]}}, "unknown parameter 'sparsty' (did you mean 'sparsity'?)"),
    ({'name': 'g', 'fixed': {**BASE, 'datset': 'digits'}}, "unknown parameter 'datset'"),
    ({'name': 'g', 'fixed': BASE, 'axes': {'prune_method': ['l1_unstructured', 'magnitude']}}, "unknown prune method 'magnitude'"),
    ({'name': 'g', 'fixed': BASE, 'axes': {'defense': ['none', 'dropout']}}, "unknown defense 'dropout'"),
    ({'name': 'g', 'fixed': {**BASE, 'dataset': 'mnist'}}, "unknown dataset 'mnist'"),
    ({'name': 'g', 'fixed': BASE, 'axes': {'sparsity': [0.5, 1.0]}}, 'sparsity'),
    ({'name': 'g', 'fixed': BASE, 'axes': {'seed': ['7']}}, 'must be of type int'),
    ({'name': 'g', 'fixed': BASE, 'axes': {'num_shadows': [2.5]}}, 'must be of type int'),
    ({'name': 'g', 'fixed': {'dataset': 'purchase100', 'arch': 'column_fc', 'prune_method': 'l1_structured'}}, 'Conv2d'),
    ({'name': 'g', 'fixed': {'dataset': 'purchase100', 'arch': 'column_fc'}, 'axes': {'prune_method': ['l2_structured', 'slimming']}}, '2 invalid cell(s)'),
    ({'name': 'g', 'fixed': {'dataset': 'digits', 'arch': 'mlp', 'prune_method': 'l1_structured'}}, 'Conv2d'),
    ({'name': '../../etc', 'fixed': BASE}, 'is not allowed'),
    ({'name': 'a/b', 'fixed': BASE}, 'is not allowed'),
    ({'name': '..', 'fixed': BASE}, 'is not allowed'),
    ({'name': 'x y', 'fixed': BASE}, 'is not allowed'),
    ({'name': 'g\n', 'fixed': BASE}, 'is not allowed'),
    ({'fixed': BASE}, 'needs a name'),
    ({'name': 'g', 'fixed': BASE, 'axes': {'sparsity': 0.5}}, 'non-empty list'),
    ({'name': 'g', 'fixed': BASE, 'axes': {'sparsity': []}}, 'non-empty list'),
    ({'name': 'g', 'fixed': BASE, 'axes': {'sparsity': [0.5, 0.5]}}, 'lists a value twice'),
    ({'name': 'g', 'fixed': {**BASE, 'sparsity': [0.5]}}, 'scalar'),
    ({'name': 'g', 'fixed': {**BASE, 'sparsity': None}}, 'scalar'),
    ({'name': 'g', 'fixed': BASE, 'axes': {'arch': ['mlp', 'cnn']}}, 'both swept'),
    ({'name': 'g', 'fixed': BASE, 'grid': {}}, "unknown grid spec key(s) ['grid']"),
    ({'name': 'g', 'fixed': BASE, 'blocks': [{'axis': {}}]}, 'blocks[0] must be a mapping with keys axes and/or fixed'),
    ({'name': 'g', 'fixed': BASE, 'blocks': [{'fixed': {'sparsity': 2.0}}]}, 'sparsity'),
    ('no_such_preset', 'presets: smoke, quick, study, study_tabular, study_recipe, study_gpu, paper'),
])
def test_bad_specs_fail_before_anything_runs(spec, msg, tmp_path, stub):
    with pytest.raises(ValueError) as e: G.expand_cells(spec)
    assert msg in str(e.value)
    with pytest.raises(ValueError):  # run_grid refuses too, and writes nothing
        G.run_grid(spec, out_dir=tmp_path / 'out', template=stub, progress=False)
    assert not (tmp_path / 'out').exists() and not (tmp_path / 'log.txt').exists()


def test_bad_yaml(tmp_path):
    (tmp_path / 'bad.yaml').write_text('name: g\naxes: {sparsity: [0.5,\n')
    with pytest.raises(ValueError, match='not valid YAML'): G.as_spec(tmp_path / 'bad.yaml')
    (tmp_path / 'list.yaml').write_text('- 1\n- 2\n')
    with pytest.raises(ValueError, match='must be a YAML mapping'): G.as_spec(tmp_path / 'list.yaml')
    with pytest.raises(ValueError, match='does not exist'): G.as_spec(tmp_path / 'missing.yaml')


def test_yaml_equals_dict_and_name_defaults_to_stem(tmp_path):
    (tmp_path / 'mine.yaml').write_text(textwrap.dedent('''
        axes:
          prune_method: [l1_unstructured, slimming]
          sparsity: [0.5, 0.9]
        fixed: {dataset: digits, arch: cnn, defense_param: 4, adaptive: yes, defense: ppb}
    '''))
    spec = G.as_spec(tmp_path / 'mine.yaml')
    assert spec.name == 'mine'
    cells = G.expand_cells(spec)
    assert len(cells) == 4
    assert cells[0].params['defense_param'] == 4.0 and isinstance(cells[0].params['defense_param'], float)
    assert cells[0].params['adaptive'] is True  # YAML 1.1 'yes'
    same = G.expand_cells({'name': 'mine', 'axes': {'prune_method': ['l1_unstructured', 'slimming'], 'sparsity': [0.5, 0.9]},
                           'fixed': {'dataset': 'digits', 'arch': 'cnn', 'defense_param': 4.0, 'adaptive': True, 'defense': 'ppb'}})
    assert [c.id for c in cells] == [c.id for c in same]


def test_preset_sizes_and_stable_ids():
    quick, smoke, paper = G.expand_cells('quick'), G.expand_cells('smoke'), G.expand_cells('paper')
    assert (len(quick), len(smoke)) == (16, 2)
    # the PPB cell at its default strength (4) is written twice in the spec (blocks[0] and blocks[2]): one cell, with a note
    assert len(paper) == 4 * 3 * 4 * 5 * 2 + 3 * 5 * 2 + 5 * 2 + 3 * 2 - 1
    merged = [c for c in paper if c.merged]
    assert len(merged) == 1 and merged[0].merged == [{'where': 'blocks[2]', 'coords': {'defense_param': 4.0, 'adaptive': False}}]
    assert merged[0].params['defense'] == 'ppb' and merged[0].params['defense_param'] == -1.0 and merged[0].where == 'blocks[0]'
    assert {c.params['prune_method'] for c in paper if c.params['arch'] == 'column_fc'} == {'l1_unstructured'}
    q = quick[0].params
    assert (q['dataset'], q['arch'], q['seed'], q['num_shadows'], q['attacks']) == ('digits', 'cnn', 7, 3, 'all')
    assert {(c.params['prune_method'], c.params['sparsity'], c.params['defense']) for c in quick} == \
        {(m, s, d) for m in G.STUDY_METHODS for s in (0.5, 0.9) for d in ('none', 'ppb')}
    assert len({c.id for c in paper}) == len(paper)
    for c in quick: assert G.GRID_NAME_RE.fullmatch(c.id) and c.id.startswith(f"digits-cnn-{c.params['prune_method']}-")
    rev = G.expand_cells(dict(G.PRESETS['quick'], axes=dict(reversed(list(G.PRESETS['quick']['axes'].items())))))
    assert {c.id for c in rev} == {c.id for c in quick} and rev[1].id != quick[1].id  # the order changes, not the ids
    # (the SIGKILL test below also checks that another process computes the same ids: its rerun skips the cells
    # the killed process finished)


def test_ids_ignore_where_a_cell_runs_but_not_what_it_computes():
    a = G.expand_cells({'name': 'g', 'fixed': {**BASE, 'sparsity': 0.5}})[0]
    b = G.expand_cells({'name': 'g', 'fixed': {**BASE, 'sparsity': 0.5, 'device': 'cpu', 'threads': 3, 'cache_dir': '/x', 'data_root': '/y'}})[0]
    c = G.expand_cells({'name': 'g', 'fixed': {**BASE, 'sparsity': 0.5, 'n_boot': 10}})[0]
    d = G.expand_cells({'name': 'g', 'fixed': {**BASE, 'sparsity': 0.5, 'defense_param': -1.0}})[0]  # the default, spelled out
    assert a.id == b.id == d.id and a.id != c.id


def test_blocks_override_and_overlaps_run_once():
    spec = {'name': 'g', 'axes': {'prune_method': ['l1_unstructured', 'slimming'], 'sparsity': [0.5, 0.9]}, 'fixed': {'seed': 7},
            'blocks': [{'fixed': {'dataset': 'digits', 'arch': 'cnn'}},
                       {'fixed': {'dataset': 'digits', 'arch': 'mlp', 'prune_method': 'l1_unstructured'}},  # overrides the axis
                       {'fixed': {'dataset': 'digits', 'arch': 'cnn', 'prune_method': 'slimming', 'sparsity': 0.9}}]}  # a repeat
    cells = G.expand_cells(spec)
    assert len(cells) == 4 + 2
    assert [(c.params['arch'], c.params['prune_method']) for c in cells[4:]] == [('mlp', 'l1_unstructured')] * 2


# ---------------------------------------------------------------- template
def test_template_parameters_match_cell_defaults():
    import papermill as pm
    path = G.template_path()
    assert path == Path(G.__file__).resolve().parent.parent / 'nbs' / 'experiment.ipynb'
    found = pm.inspect_notebook(str(path))
    assert set(found) == set(CELL_DEFAULTS) | {'out_dir'}
    for k, d in CELL_DEFAULTS.items():  # flat, typed (annotated) and commented scalars
        assert type(eval(found[k]['default'])) is type(d) and found[k]['inferred_type_name'] == type(d).__name__, k
        assert found[k]['help'], k
    assert found['out_dir']['default'] in ("''", '""')


def test_template_errors(tmp_path, monkeypatch):
    monkeypatch.setenv('MIA_PRUNING_TEMPLATE', str(tmp_path / 'gone.ipynb'))
    with pytest.raises(FileNotFoundError, match='gone.ipynb'): G.template_path()
    nb = nbformat.v4.new_notebook(); nb.cells = [nbformat.v4.new_code_cell('x = 1')]
    nbformat.write(nb, str(tmp_path / 'untagged.ipynb'))
    with pytest.raises(ValueError, match="no cell tagged 'parameters'"): G.load_template(tmp_path / 'untagged.ipynb')


# ---------------------------------------------------------------- lock
def test_second_grid_on_a_held_folder_fails_clearly(tmp_path, stub):
    out = tmp_path / 'out'
    holder = G.GridLock(out).acquire()  # a grid holding the folder: this process (alive)
    try:
        with pytest.raises(G.GridLockedError) as e:
            G.run_grid({'name': 'g', 'fixed': BASE}, out_dir=out, template=stub, progress=False)
        assert f'process {os.getpid()} on {socket.gethostname()}' in str(e.value) and str(out / '.lock') in str(e.value)
        assert not (out / 'runs').exists() and read_log(tmp_path / 'log.txt') == []
    finally:
        holder.release()
    # a holder that died without releasing (SIGKILL): its lock is stale and is taken over with a warning
    dead = subprocess.Popen([sys.executable, '-c', 'pass']); dead.wait()
    (out / '.lock').write_text(json.dumps({'pid': dead.pid, 'host': socket.gethostname(), 'started': 'earlier'}))
    with pytest.warns(UserWarning, match=f'stale lock .* of process {dead.pid}'):
        rep = G.run_grid({'name': 'g', 'fixed': BASE}, out_dir=out, template=stub, workers=1, progress=False)
    assert rep.ok and len(rep.ran) == 1 and not (out / '.lock').exists()


def test_lock_from_another_host_is_not_taken(tmp_path):
    (tmp_path / '.lock').write_text(json.dumps({'pid': 1, 'host': 'node-17', 'started': 'yesterday'}))
    with pytest.raises(G.GridLockedError, match='process 1 on node-17 since yesterday'): G.GridLock(tmp_path).acquire()
    assert json.loads((tmp_path / '.lock').read_text())['host'] == 'node-17'


def test_lock_with_a_recycled_pid_is_stale(tmp_path):
    # our own (alive) pid but another process start time: a pid recycled after the holder died
    (tmp_path / '.lock').write_text(json.dumps({'pid': os.getpid(), 'host': socket.gethostname(), 'proc_start': '1', 'started': 'x'}))
    if proc_start(os.getpid()) is None: pytest.skip('no /proc here')
    with pytest.warns(UserWarning, match='stale lock'):
        with G.GridLock(tmp_path) as lock: assert lock.holder()['proc_start'] == proc_start(os.getpid())


# ---------------------------------------------------------------- resume, failures, partial folders
def test_resume_failure_and_partial_folders(tmp_path, stub):
    out, log = tmp_path / 'out', tmp_path / 'log.txt'
    spec = {'name': 'g', 'fixed': BASE, 'axes': {'seed': [7, 13, 21]}}
    ids = {c.params['seed']: c.id for c in G.expand_cells(spec)}
    r1 = G.run_grid(spec, out_dir=out, template=stub, workers=2, progress=False)
    assert sorted(r1.ran) == sorted([ids[7], ids[21]]) and list(r1.failed) == [ids[13]] and not r1.ok
    assert 'RuntimeError: this cell was asked to fail' in r1.failed[ids[13]]
    failed = out / 'runs' / ids[13]
    assert not (failed / 'metrics.json').exists()
    assert 'this cell was asked to fail' in (failed / 'run.ipynb').read_text()  # papermill kept the traceback
    status = json.loads((out / 'grid.json').read_text())['cells']
    assert status == {ids[7]: 'complete', ids[13]: 'failed', ids[21]: 'complete'}
    df = pd.read_csv(out / 'summary.csv')
    assert sorted(df.cell_id.unique()) == sorted([ids[7], ids[21]]) and len(df) == 2 * 2 * 2

    # workers got their share of the 2 cores: one torch thread each, through the environment and the parameter
    p7 = json.loads((out / 'runs' / ids[7] / 'params.json').read_text())
    n_cpu = len(os.sched_getaffinity(0))
    assert p7['provenance']['env']['OMP_NUM_THREADS'] == str(max(1, n_cpu // 2)) and p7['params']['threads'] == max(1, n_cpu // 2)
    assert p7['provenance']['cwd'] == str((out / 'runs' / ids[7]).resolve())  # the kernel ran in its run folder
    assert p7['params']['cache_dir'] == str((tmp_path / 'cache').resolve())  # one cache for all cells

    # rerun: the complete cells are skipped, the failed one is retried (and fails again)
    n = len(read_log(log))
    r2 = G.run_grid(spec, out_dir=out, template=stub, workers=1, progress=False)
    assert sorted(r2.skipped) == sorted([ids[7], ids[21]]) and list(r2.failed) == [ids[13]] and r2.ran == []
    assert [l[1] for l in read_log(log)[n:] if l[0] == 'start'] == [ids[13]]

    # a partial folder (as left by a crash: files but no metrics.json) is cleared and its cell rerun
    (out / 'runs' / ids[21] / 'metrics.json').unlink()
    (out / 'runs' / ids[21] / 'stale.tmp').write_text('half written')
    n = len(read_log(log))
    r3 = G.run_grid({**spec, 'axes': {'seed': [7, 21]}}, out_dir=out, template=stub, workers=1, progress=False)
    assert r3.ok and r3.ran == [ids[21]] and r3.skipped == [ids[7]]
    assert [l[1] for l in read_log(log)[n:] if l[0] == 'start'] == [ids[21]]
    assert not (out / 'runs' / ids[21] / 'stale.tmp').exists()

    # no resume: everything reruns
    r4 = G.run_grid({**spec, 'axes': {'seed': [7]}}, out_dir=out, template=stub, workers=1, progress=False, resume=False)
    assert r4.ran == [ids[7]] and r4.skipped == []


@pytest.mark.skipif(not hasattr(R, 'stored_attacks'), reason='runs.stored_attacks is not there yet')
def test_resume_recomputes_a_complete_run_that_lacks_an_attack_its_cell_runs_now(tmp_path, stub, monkeypatch, capsys):
    "A cell with attacks='all' keeps its id when the registry gains an attack: its complete run lacks that attack's scores."
    out, log = tmp_path / 'out', tmp_path / 'log.txt'
    spec = {'name': 'g', 'fixed': BASE, 'axes': {'seed': [7, 21]}}
    ids = {c.params['seed']: c.id for c in G.expand_cells(spec)}
    assert G.run_grid(spec, out_dir=out, template=stub, workers=1, progress=False).ok
    held = R.stored_attacks(out / 'runs' / ids[7])  # the stub stores a score for each attack its cell runs
    assert held == P.cell_attacks(ids and G.expand_cells(spec)[0].params)
    # seed 7 now runs an attack its run does not hold (as if the registry had gained it); seed 21 runs only what it holds
    monkeypatch.setattr(P, 'cell_attacks', lambda p: {**held, 'dense': held['dense'] + ['newcomer']} if p['seed'] == 7 else held)
    capsys.readouterr()

    # its replacement fails: the complete run stays (recomputed in a staging folder, as without resume)
    before = (out / 'runs' / ids[7] / 'metrics.json').read_bytes()
    r = G.run_grid(spec, out_dir=out, template=stub_template(tmp_path / 'fail7.ipynb', fail_seed=7), workers=1, progress=False)
    assert list(r.failed) == [ids[7]] and r.skipped == [ids[21]] and r.ran == []
    note = capsys.readouterr().out
    assert f'1 complete run(s) lack attacks' in note and f'{ids[7]} lacks dense/newcomer' in note
    assert is_complete(out / 'runs' / ids[7], ids[7]) and (out / 'runs' / ids[7] / 'metrics.json').read_bytes() == before
    assert json.loads((out / 'grid.json').read_text())['cells'][ids[7]] == 'complete (previous run kept)'

    # a replacement that completes is swapped in; the cell that holds every attack it runs is kept
    n = len(read_log(log))
    r = G.run_grid(spec, out_dir=out, template=stub, workers=1, progress=False)
    assert r.ok and r.ran == [ids[7]] and r.skipped == [ids[21]]
    assert [l[1] for l in read_log(log)[n:] if l[0] == 'start'] == [ids[7]]
    monkeypatch.setattr(P, 'cell_attacks', lambda p: held)
    r = G.run_grid(spec, out_dir=out, template=stub, workers=1, progress=False)
    assert r.ran == [] and sorted(r.skipped) == sorted(ids.values())


def test_string_parameters_travel_as_data(tmp_path, stub):
    evil = 'a"b\'c\\d\nimport os; os.system("touch PWNED") #\t{x}'
    spec = {'name': 'g', 'fixed': {**BASE, 'data_root': evil}}
    rep = G.run_grid(spec, out_dir=tmp_path / 'out', template=stub, workers=1, progress=False)
    assert rep.ok
    got = json.loads((tmp_path / 'out' / 'runs' / rep.ran[0] / 'params.json').read_text())['params']['data_root']
    assert got == evil
    assert not list(tmp_path.rglob('PWNED'))


def test_notebook_that_writes_nothing_is_a_failure(tmp_path, monkeypatch):
    nb = nbformat.v4.new_notebook(metadata={'kernelspec': {'name': 'python3', 'display_name': 'python3', 'language': 'python'}})
    p = nbformat.v4.new_code_cell("out_dir = ''"); p.metadata['tags'] = ['parameters']
    nb.cells = [p, nbformat.v4.new_code_cell('x = 1')]
    nbformat.write(nb, str(tmp_path / 'lazy.ipynb'))
    rep = G.run_grid({'name': 'g', 'fixed': BASE}, out_dir=tmp_path / 'out', template=tmp_path / 'lazy.ipynb', workers=1, progress=False)
    assert 'metrics.json is missing' in next(iter(rep.failed.values())) and 'out_dir ignored?' in next(iter(rep.failed.values()))


def test_bad_execution_options(tmp_path, stub):
    for kw, msg in [({'executor': 'slurm'}, "'local' or 'dask'"), ({'workers': 0}, 'positive integer'),
                    ({'threads': -1}, 'non-negative'), ({'scheduler': 'tcp://x:1'}, "executor='dask'")]:
        with pytest.raises(ValueError, match=msg): G.run_grid({'name': 'g', 'fixed': BASE}, out_dir=tmp_path / 'o', template=stub, **kw)
    (tmp_path / 'afile').write_text('x')
    with pytest.raises(ValueError, match='is not a folder'): G.run_grid({'name': 'g', 'fixed': BASE}, out_dir=tmp_path / 'afile', template=stub)


# ---------------------------------------------------------------- collect
def _run(root, name, params, attacks=('conf', 'samia'), complete=True, rows=None):
    "A synthetic run folder as the pipeline writes it (without a notebook), certified complete unless `complete` is False."
    rd = Path(root) / 'runs' / name; rd.mkdir(parents=True)
    save_json(rd / 'params.json', {'params': params, 'provenance': {'timings': {'total': 1.0}, 'cell_id': name}})
    save_json(rd / 'rows.json', rows if rows is not None else
              [{'model_state': s, 'attack': a, 'attack_acc': 0.5 + 0.1 * (s == 'pruned'), 'auc': 0.61, 'test_acc': 0.9}
               for s in ('dense', 'pruned') for a in attacks])
    np.savez(rd / 'scores.npz', dense__py=np.ones(3))
    save_json(rd / 'metrics.json', {'pruned/conf/attack_acc': 0.6})
    if complete: finish_run(rd, notebook=False)
    return rd


def test_collect_reads_run_folders_only(tmp_path):
    _run(tmp_path, 'folder-name-says-0.1', {'dataset': 'digits', 'arch': 'cnn', 'sparsity': 0.9, 'cache_dir': '/home/me'})
    _run(tmp_path, 'b', {'dataset': 'digits', 'arch': 'cnn', 'sparsity': 0.5}, attacks=('conf', 'samia', 'loss'))
    _run(tmp_path, 'partial', {'dataset': 'digits', 'arch': 'cnn', 'sparsity': 0.7}, complete=False)
    bad = _run(tmp_path, 'corrupt', {'dataset': 'digits', 'arch': 'cnn', 'sparsity': 0.6})
    (bad / 'rows.json').write_text('[{"model_state": "dense", "att')
    (tmp_path / 'runs' / 'stray-file.txt').write_text('not a run')
    with pytest.warns(UserWarning) as caught:
        df = G.collect(tmp_path)
    msgs = sorted(str(w.message) for w in caught)
    assert len(msgs) == 2 and 'corrupt: not complete (rows.json does not match its completion record' in msgs[0] \
        and 'partial: not complete (it has no completion record' in msgs[1], msgs
    assert len(df) == 2 * 2 + 2 * 3
    assert list(df.columns[:len(G.SUMMARY_COLUMNS)]) == G.SUMMARY_COLUMNS and df.columns[len(G.SUMMARY_COLUMNS)] == 'cell_id'
    assert set(df[df.cell_id == 'folder-name-says-0.1'].sparsity) == {0.9}  # coordinates from params.json
    assert 'cache_dir' not in df.columns  # private paths stay out of the committed table
    assert list(df.sparsity) == [0.5] * 6 + [0.9] * 4  # sorted by coordinates
    assert list(df.model_state[:6]) == ['dense'] * 3 + ['pruned'] * 3
    on_disk = pd.read_csv(tmp_path / 'summary.csv')
    assert on_disk.shape == df.shape and np.allclose(on_disk.attack_acc, df.attack_acc)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith('.')] == []  # no temp file left behind


def test_collect_empty_and_missing(tmp_path):
    df = G.collect(tmp_path)
    assert len(df) == 0 and list(df.columns[:3]) == ['dataset', 'arch', 'prune_method']
    assert pd.read_csv(tmp_path / 'summary.csv').shape == (0, len(df.columns))
    with pytest.raises(ValueError, match='is not a folder'): G.collect(tmp_path / 'nope')


# ---------------------------------------------------------------- SIGKILL mid-grid, then rerun
KILLED = '''
import sys
from mia_pruning.grid import run_grid
run_grid({'name': 'k', 'fixed': {'dataset': 'digits', 'arch': 'mlp'}, 'axes': {'seed': [1, 2, 3, 4]}},
         out_dir=sys.argv[1], template=sys.argv[2], workers=int(sys.argv[3]), progress=False)
'''


@pytest.mark.parametrize('workers', [1, 2])
def test_sigkill_mid_grid_then_rerun_completes_each_cell_once(tmp_path, stub, monkeypatch, workers):
    out, log = tmp_path / 'out', tmp_path / 'log.txt'
    monkeypatch.setenv('MIA_TEST_SLEEP', '1.5')
    proc = subprocess.Popen([sys.executable, '-c', KILLED, str(out), str(stub), str(workers)])
    deadline = time.time() + 120
    while time.time() < deadline:  # kill once two cells are done and another one is running
        lines = read_log(log)
        done = {l[1] for l in lines if l[0] == 'done'}
        running = {l[1] for l in lines if l[0] == 'start'} - done
        if len(done) >= 2 and running: break
        assert proc.poll() is None, 'the grid ended before it could be killed'
        time.sleep(0.1)
    else: pytest.fail('the grid did not get going')
    os.kill(proc.pid, signal.SIGKILL); proc.wait()
    killed_at = len(read_log(log))
    time.sleep(0.3)  # a request already in flight may still start its notebook cell
    settled = len(read_log(log))
    time.sleep(2.5)  # a kernel that outlived its grid would finish its cell meanwhile (the stub sleeps 1.5 s)
    complete = {p.name for p in (out / 'runs').iterdir() if is_complete(p)}
    after = read_log(log)[killed_at:]
    assert len(read_log(log)) == settled and not [l for l in after if l[0] == 'done'], \
        f'a worker or kernel outlived the grid and kept working: {after}'
    assert complete <= done and len(complete) >= 1 and (out / '.lock').exists()  # a cell done but not certified is not complete
    for p in (out / 'runs').iterdir():
        if p.name in complete: assert verify_run(p) == []  # a finished notebook and consistent files

    monkeypatch.setenv('MIA_TEST_SLEEP', '0')
    with pytest.warns(UserWarning, match='stale lock'):
        rep = G.run_grid({'name': 'k', 'fixed': BASE, 'axes': {'seed': [1, 2, 3, 4]}}, out_dir=out, template=stub,
                         workers=1, progress=False)
    assert rep.ok and sorted(rep.skipped) == sorted(complete) and len(rep.ran) == 4 - len(complete)
    lines = read_log(log)
    assert sorted(l[1] for l in lines[settled:] if l[0] == 'done') == sorted(set(rep.cell_ids) - complete)  # each rerun once
    assert all(is_complete(out / 'runs' / c) and verify_run(out / 'runs' / c) == [] for c in rep.cell_ids)  # every cell complete
    assert not {l[1] for l in lines[killed_at:] if l[0] == 'start'} & complete  # finished cells were not rerun
    assert len(pd.read_csv(out / 'summary.csv')) == 4 * 4 and not (out / '.lock').exists()


# (the real notebook under Dask, a LocalCluster and a real scheduler, against the local pool: tests/test_scheduling.py)
