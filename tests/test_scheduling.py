"""Model-level scheduling of a grid: every distinct model is trained once, as its own task, before the cells that use it;
the cells give the same numbers as a cell trained on its own; the per-entry cache lock; Dask (a LocalCluster and a real scheduler) against the local pool.

The grids here are tiny (digits, mlp, 1 shadow, 2 epochs, two threshold attacks) and run the real experiment notebook.
"""
import json, os, socket, subprocess, sys, textwrap, time
from pathlib import Path

import pandas as pd
import pytest

from mia_pruning import grid as G
from mia_pruning import pipeline as P
from mia_pruning.core import ArtifactCache, cache_use

TINY = {'dataset': 'digits', 'arch': 'mlp', 'num_shadows': 1, 'epochs': 2, 'attack_epochs': 1, 'attacks': 'loss,conf',
        'n_boot': 0, 'num_references': 0, 'sparsity': 0.5}
METHODS = ['l1_unstructured', 'global_unstructured']
SPEC = {'name': 'sched', 'fixed': TINY, 'axes': {'prune_method': METHODS}}


def canon(d) -> str: return json.dumps(d, sort_keys=True, default=str)  # NaN-safe equality


def entries(cache: Path, kind: str) -> list[str]:
    d = cache / kind
    return sorted(p.name for p in d.iterdir() if not p.name.startswith('.')) if d.is_dir() else []


def distinct_jobs() -> dict:
    jobs = {j.key: j for m in METHODS for j in P.cell_models({**TINY, 'prune_method': m})}
    return {k: sum(j.kind == k for j in jobs.values()) for k in ('dense', 'pruned')}


def summary_metrics(out: Path) -> pd.DataFrame:
    df = pd.read_csv(out / 'summary.csv')
    cols = [c for c in ('cell_id', 'model_state', 'attack', 'attack_acc', 'auc', 'test_acc', 'train_acc') if c in df]
    return df[cols].sort_values(['cell_id', 'model_state', 'attack']).reset_index(drop=True)


@pytest.fixture(scope='module')
def local_grid(tmp_path_factory):
    """The tiny grid, model-level scheduling, a local pool of 2 workers, one torch thread each, a fresh cache.

    Built once per test session: pytest-xdist may hand this module's tests to both workers, and each would build its own
    copy of a module fixture. The first builder holds a lock in the session's shared temp folder; the other waits and
    reads the finished grid and its report (written by this session, as JSON)."""
    import dataclasses, fcntl
    worker = os.environ.get('PYTEST_XDIST_WORKER')  # set in an xdist worker, whose basetemp sits in the session's folder
    shared = tmp_path_factory.getbasetemp().parent if worker else tmp_path_factory.getbasetemp()
    root, record = shared / 'scheduling_local_grid', shared / 'scheduling_local_grid.json'
    with open(shared / 'scheduling_local_grid.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not record.exists():
            old = os.environ.get('MIA_PRUNING_CACHE')
            os.environ['MIA_PRUNING_CACHE'] = str(root / 'cache')
            try: rep = G.run_grid(SPEC, out_dir=root / 'out', workers=2, threads=1, progress=False)
            finally:
                if old is None: os.environ.pop('MIA_PRUNING_CACHE', None)
                else: os.environ['MIA_PRUNING_CACHE'] = old
            record.write_text(json.dumps(dataclasses.asdict(rep), default=str))
        d = json.loads(record.read_text())
    rep = G.GridReport(**{**d, 'out_dir': Path(d['out_dir']), 'summary_path': d['summary_path'] and Path(d['summary_path'])})
    assert rep.ok, rep  # (every test below reads this grid)
    return root, rep


def test_each_distinct_model_is_trained_once(local_grid):
    root, rep = local_grid
    assert rep.ok, rep
    want = distinct_jobs()
    assert want == {'dense': 2, 'pruned': 4}  # the two methods share the dense victim and shadow
    cache = root / 'cache'
    assert (len(entries(cache, 'dense_model')), len(entries(cache, 'pruned_model'))) == (want['dense'], want['pruned'])
    # every model task ran once and built its model; the cells then trained nothing
    assert len(rep.models) == sum(want.values()) and all(r['built'] for r in rep.models.values()), rep.models
    assert sorted(r['entry'] for r in rep.models.values() if r['kind'] == 'dense') == entries(cache, 'dense_model')
    assert sorted(r['entry'] for r in rep.models.values() if r['kind'] == 'pruned') == entries(cache, 'pruned_model')
    for cid in rep.cell_ids:
        prov = json.loads((root / 'out' / 'runs' / cid / 'params.json').read_text())['provenance']
        assert {k: (v['built'], v['found']) for k, v in prov['models'].items()} == {'dense_model': (0, 2), 'pruned_model': (0, 2)}
        assert prov['attack_states']['pruned']['cached'] is False and prov['attack_states']['pruned']['built']
        assert 'attacks_pruned_built' in prov['timings']  # each cell built its own pruned attack state
    # the two cells share the dense state: each of its attacks was built by exactly one of them and found by the other (never
    # redone). Which cell builds which attack depends on timing: both reach the dense state at once, and each attack entry's
    # lock lets the first builder in and hands the entry to the other
    states = [json.loads((root / 'out' / 'runs' / c / 'params.json').read_text())['provenance'] for c in rep.cell_ids]
    built = [s['attack_states']['dense']['built'] for s in states]
    assert sorted(built[0] + built[1]) == sorted(TINY['attacks'].split(',')), built
    for s, b in zip(states, built):
        assert sorted(s['timings'].get('attacks_dense_built', {})) == sorted(b)  # the seconds of exactly what it built
        if b: assert s['attack_states']['dense']['cached'] is False  # a cell that built part of the state does not call it cached
    # grid.json: the wall seconds and where the time went
    g = json.loads((root / 'out' / 'grid.json').read_text())
    assert g['schedule'] == 'models' and g['seconds'] > 0 and g['stages']['models']['trained'] == 6
    assert g['stages']['cells']['ran'] == 2 and g['stages']['run_cell']['runs'] == 2
    assert g['stages']['run_cell']['seconds']['total'] > 0 and 'model tasks: 6 (6 trained' in rep.stage_summary()


def test_cells_whose_models_are_cached_do_not_wait(local_grid):
    root, rep = local_grid
    cache = str(root / 'cache')
    cts = [{'cell_id': f'c{i}', 'params': {**TINY, 'prune_method': m, 'cache_dir': cache}} for i, m in enumerate(METHODS)]
    plan = G.plan_tasks(cts)
    assert [(t.key, t.after) for t in plan] == [('c0', ()), ('c1', ())]
    other = G.plan_tasks([{**cts[0], 'params': {**cts[0]['params'], 'sparsity': 0.6}}])  # new pruned models, cached dense ones
    assert [t.key.split('-')[0] for t in other] == ['model:pruned', 'model:pruned', 'c0'] and len(other[-1].after) == 2


def test_same_metrics_as_a_cell_trained_on_its_own(local_grid, tmp_path):
    "Cell-level: run_cell trains every model of the cell itself, in another cache; the numbers are the same."
    root, rep = local_grid
    for m in METHODS[:1]:
        res = P.run_cell(progress=False, cache_dir=str(tmp_path / 'alone'), threads=1, **{**TINY, 'prune_method': m})
        cid = res.provenance['cell_id']
        assert cid in rep.cell_ids
        got = json.loads((root / 'out' / 'runs' / cid / 'metrics.json').read_text())
        assert canon(got) == canon(res.metrics) and len(got) > 10
        use = res.provenance['models']
        assert (use['dense_model']['built'], use['pruned_model']['built']) == (2, 2)  # it trained them itself


def test_a_failing_model_task_fails_its_cells_clearly(tmp_path, monkeypatch):
    def broken(job, *a, **k): raise RuntimeError(f'cannot train {job.role}')
    monkeypatch.setattr(P, 'build_model_job', broken)  # workers=1: the tasks run in this process
    rep = G.run_grid(SPEC, out_dir=tmp_path / 'out', workers=1, progress=False)
    assert not rep.ok and sorted(rep.failed) == sorted(rep.cell_ids) and rep.ran == []
    assert all('its model(s) could not be trained' in e and 'cannot train' in e for e in rep.failed.values()), rep.failed
    assert all('not run: 2 task(s) it needs failed' in e for e in rep.failed.values())  # the root causes: the dense models
    errs = {r['role'] + '/' + r['kind']: r['error'] for r in rep.models.values()}
    assert len(rep.models) == 6 and all(('cannot train' if k.endswith('dense') else 'DependencyFailed: not run') in e
                                        for k, e in errs.items()), errs  # the pruned ones never ran
    g = json.loads((tmp_path / 'out' / 'grid.json').read_text())
    assert set(g['cells'].values()) == {'failed'} and g['stages']['models']['failed'] == 6


LOCK_SCRIPT = '''
import sys, os, time
from pathlib import Path
from mia_pruning.core import ArtifactCache
root, log = sys.argv[1], Path(sys.argv[2])
def build(tmp):
    with open(log, 'a') as f: f.write(f'build {os.getpid()}\\n')
    time.sleep(1.0); (tmp / 'x.txt').write_text(str(os.getpid()))
e = ArtifactCache(root).get_or_build('demo', {'k': 1}, build)
with open(log, 'a') as f: f.write(f'got {os.getpid()} {(e / "x.txt").read_text()}\\n')
'''


def test_two_processes_build_one_entry_once(tmp_path):
    log = tmp_path / 'log.txt'
    procs = [subprocess.Popen([sys.executable, '-c', LOCK_SCRIPT, str(tmp_path / 'cache'), str(log)]) for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    lines = [l.split() for l in log.read_text().splitlines()]
    builds = [l for l in lines if l[0] == 'build']
    got = [l for l in lines if l[0] == 'got']
    assert len(builds) == 1 and len(got) == 2 and {l[2] for l in got} == {builds[0][1]}  # both load the one build
    assert entries(tmp_path / 'cache', 'demo') == [ArtifactCache(tmp_path / 'cache').key_hash('demo', {'k': 1})]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def same_runs(out: Path, ref: Path, cell_ids):
    "The grid in `out` gives the reference grid's metrics, cell by cell, and its summary's numbers."
    pd.testing.assert_frame_equal(summary_metrics(out), summary_metrics(ref))
    for cid in cell_ids:
        a = json.loads((out / 'runs' / cid / 'metrics.json').read_text())
        b = json.loads((ref / 'runs' / cid / 'metrics.json').read_text())
        assert canon(a) == canon(b) and len(a) > 10
        assert (out / 'runs' / cid / 'run.ipynb').exists()


@pytest.mark.slow  # about a minute on 2 cores: a LocalCluster starts, its workers start kernels that import torch
def test_a_local_dask_cluster_gives_the_local_pool_metrics(local_grid, tmp_path, monkeypatch):
    "executor='dask' without a scheduler (a LocalCluster of 2 workers), its own empty cache: every model and number as the local pool's."
    pytest.importorskip('distributed')
    root, rep = local_grid
    monkeypatch.setenv('MIA_PRUNING_CACHE', str(tmp_path / 'cache'))
    drep = G.run_grid(SPEC, out_dir=tmp_path / 'out', executor='dask', workers=2, threads=1, progress=False)
    assert drep.ok, drep
    assert drep.cell_ids == rep.cell_ids and len(drep.models) == 6 and all(r['built'] for r in drep.models.values())
    same_runs(tmp_path / 'out', root / 'out', drep.cell_ids)


def test_real_dask_scheduler_gives_the_local_pool_metrics(local_grid, tmp_path, monkeypatch):
    pytest.importorskip('distributed')
    root, rep = local_grid
    monkeypatch.setenv('MIA_PRUNING_CACHE', str(tmp_path / 'cache'))
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}
    port = _free_port()
    addr = f'tcp://127.0.0.1:{port}'
    procs = [subprocess.Popen(['dask', 'scheduler', '--host', '127.0.0.1', '--port', str(port), '--no-dashboard'],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        from distributed import Client
        deadline = time.time() + 60
        while True:
            try:
                with socket.create_connection(('127.0.0.1', port), timeout=1): break
            except OSError:
                assert time.time() < deadline and procs[0].poll() is None, 'the Dask scheduler did not start'
                time.sleep(0.3)
        procs += [subprocess.Popen(['dask', 'worker', addr, '--nworkers', '1', '--nthreads', '1', '--no-dashboard'],
                                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
        from mia_pruning.executors import on_dask_worker, DASK_MALLOC_TRIM
        var, value = DASK_MALLOC_TRIM
        with Client(addr, timeout=30) as c:
            c.wait_for_workers(2, timeout=90)
            assert set(c.run(os.getenv, var).values()) == {value}  # the nannies put Dask's malloc setting in each worker
            for w in c.run(os.getpid):  # a task run through on_dask_worker no longer sees it, nor do the kernels its worker starts
                assert c.submit(on_dask_worker, os.getenv, var, workers=[w], pure=False).result() is None
            assert set(c.run(os.getenv, var).values()) == {None}
        drep = G.run_grid(SPEC, out_dir=tmp_path / 'out', executor='dask', scheduler=addr, threads=1, progress=False)
        assert drep.ok, drep
        assert len(drep.models) == 6 and all(r['built'] for r in drep.models.values())
        assert len(entries(tmp_path / 'cache', 'dense_model')) == 2 and len(entries(tmp_path / 'cache', 'pruned_model')) == 4
        same_runs(tmp_path / 'out', root / 'out', drep.cell_ids)
    finally:
        for p in procs[::-1]:
            p.terminate()
            try: p.wait(timeout=15)
            except subprocess.TimeoutExpired: p.kill(); p.wait()
