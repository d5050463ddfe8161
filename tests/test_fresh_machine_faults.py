"""The faults of issue 22, item 5 (a hostile-input and fault probe of the landed code), each with a known answer:
the report counts exactly the runs summary.csv holds; --out never lands inside another grid or on a user's files;
every input and environment variable is checked before any work; a deep YAML bomb is one line; a cache entry that
cannot be read for lack of permission is never deleted, and a full disk names the file; a completion record only
certifies a run of the right shape; a forged attack-state entry heals; a 5,000-digit seed is one short line."""
import errno, json, os, subprocess, sys
from pathlib import Path

import numpy as np
import pytest

from mia_pruning import grid as G, runs as R
from mia_pruning.core import ArtifactCache, save_json, save_arrays, load_arrays, atomic_write
from test_grid import stub_template, BASE

CLI = [sys.executable, '-c', 'import sys; from mia_pruning.cli import main; sys.exit(main())']


def cli(*args, cwd=None, env=None, timeout=120):
    r = subprocess.run(CLI + list(args), capture_output=True, text=True, cwd=cwd, env={**os.environ, **(env or {})}, timeout=timeout)
    return r.returncode, [l for l in r.stderr.splitlines() if l.strip()]


# ---------------------------------------------------------------- the report counts the runs summary.csv holds, no others
def fake_run(runs: Path, cid: str, seed: int, certify=True, params=None):
    "A run folder with both states' scores for 'loss' and 'two_release' (members: the first half)."
    rd = runs / cid; rd.mkdir(parents=True)
    m = np.arange(40) < 20
    rng = np.random.RandomState(seed)
    arr = {}
    for s in ('dense', 'pruned'):
        arr.update({f'{s}__is_member': m, f'{s}__labels': np.arange(40) % 2, f'{s}__index': np.arange(40), f'{s}__py': rng.rand(40),
                    f'{s}__score__loss': rng.rand(40) + m, f'{s}__pred__loss': m})
    arr['pruned__score__two_release'] = rng.rand(40) + 2 * m
    save_arrays(rd / 'scores.npz', **arr)
    p = params or {'dataset': 'digits', 'arch': 'mlp', 'prune_method': 'l1_unstructured', 'sparsity': 0.5, 'defense': 'none',
                   'adaptive': False, 'seed': seed}
    save_json(rd / 'params.json', {'params': p, 'provenance': {'cell_id': cid}})
    save_json(rd / 'rows.json', [{'model_state': s, 'attack': 'loss', 'auc': 0.6, 'attack_acc': 0.6, 'test_acc': 0.9} for s in ('dense', 'pruned')])
    save_json(rd / 'metrics.json', {'pruned/loss/auc': 0.6})
    if certify: R.finish_run(rd, cid, notebook=False)
    return rd


def test_exposure_and_two_release_read_exactly_the_runs_summary_csv_holds(tmp_path):
    from mia_pruning import exposure as X
    from mia_pruning.report import two_release_table
    out = tmp_path / 'g'; runs = out / 'runs'
    good = fake_run(runs, 'good', 1)
    fake_run(runs, 'unfinished', 2, certify=False)  # killed before its completion record
    damaged = fake_run(runs, 'damaged', 3); (damaged / 'metrics.json').write_text('{"pruned/loss/auc": 0.99}')
    fake_run(runs, 'old', 4)  # complete, but no longer a cell of the spec
    listy = fake_run(runs, 'listy', 5)
    save_json(listy / 'params.json', {'params': {'dataset': 'digits', 'seed': [5]}, 'provenance': {'cell_id': 'listy'}})
    rec = json.loads((listy / R.RECORD).read_text()); rec['files']['params.json'] = R.sha256_file(listy / 'params.json')
    (listy / R.RECORD).write_text(json.dumps(rec))  # a list-shaped parameter, its record rewritten to certify it
    save_json(out / 'grid.json', {'cells': {c: 'complete' for c in ('good', 'unfinished', 'damaged', 'listy')}})
    with pytest.warns(UserWarning) as caught:
        df = R.collect(out)
        dirs = X._run_dirs(out)
        table = two_release_table(out, inputs=('loss',))  # its fake runs store loss
    assert set(df.cell_id) == {'good'} and dirs == [good]
    assert table.seeds.tolist() == [1]  # not 4 runs of the same setting
    said = ' '.join(str(w.message) for w in caught)
    assert 'listy' in said and 'non-scalar' in said  # the run it leaves out is named, and why
    assert not R.is_complete(listy)


def test_resume_reruns_a_run_whose_record_certifies_a_list_shaped_params_json(tmp_path, monkeypatch):
    monkeypatch.setenv('MIA_TEST_LOG', str(tmp_path / 'log.txt'))
    stub = stub_template(tmp_path / 'stub.ipynb')
    spec, out = {'name': 'g', 'fixed': BASE}, tmp_path / 'out'
    cid = G.expand_cells(spec)[0].id
    assert G.run_grid(spec, out_dir=out, template=stub, workers=1, progress=False).ok
    rd = out / 'runs' / cid
    (rd / 'params.json').write_text(json.dumps([{'params': {}}]))
    rec = json.loads((rd / R.RECORD).read_text()); rec['files']['params.json'] = R.sha256_file(rd / 'params.json')
    (rd / R.RECORD).write_text(json.dumps(rec))  # the record rewritten to match the forgery
    assert not R.is_complete(rd) and 'params.json holds a list' in R.run_problem(rd)
    rep = G.run_grid(spec, out_dir=out, template=stub, workers=1, progress=False)
    assert rep.ran == [cid] and rep.skipped == [] and R.is_complete(rd)


# ---------------------------------------------------------------- --out inside another grid, or on a user's files
def test_out_inside_another_grid_or_on_a_users_folder_is_refused(tmp_path):
    grid = tmp_path / 'grid'; (grid / 'runs' / 'cell').mkdir(parents=True); save_json(grid / 'grid.json', {'cells': {}})
    (tmp_path / 'link').symlink_to(grid / 'runs')
    mine = tmp_path / 'mine'; mine.mkdir(); (mine / 'notes.md').write_text('my notes')
    for where, msg in [(grid / 'runs' / 'cell' / 'nested', 'inside the output folder of another grid'),
                       (tmp_path / 'link' / 'nested', 'inside the output folder of another grid'),
                       (mine, 'already holds files and is not a grid output folder')]:
        code, err = cli('run', 'dataset=digits', '--out', str(where))
        assert code == 2 and len(err) == 1 and msg in err[0], err
    assert (mine / 'notes.md').read_text() == 'my notes' and sorted(p.name for p in mine.iterdir()) == ['notes.md']
    assert not (grid / 'runs' / 'cell' / 'nested').exists()
    G.check_out_dir(tmp_path / 'new'); G.check_out_dir(grid)  # a new folder, or a grid's own, is fine
    empty = tmp_path / 'empty'; empty.mkdir(); G.check_out_dir(empty)


# ---------------------------------------------------------------- every input checked before any work
@pytest.mark.parametrize('args, env, msg', [
    (['--timeout', '2.5'], {}, 'timeout must be a positive whole number of seconds'),
    ([], {'MIA_PRUNING_KERNELS': 'bogus'}, "$MIA_PRUNING_KERNELS must be one of ('forked', 'fresh')"),
    (['seed=' + '7' * 5000], {}, 'parameter seed takes an integer from 0 to 4,294,967,295'),
], ids=['fractional-timeout', 'bad-kernels-variable', '5000-digit-seed'])
def test_bad_execution_input_is_one_line_before_any_work(args, env, msg, tmp_path):
    out = tmp_path / 'out'
    code, err = cli('run', 'dataset=digits', *args, '--out', str(out), env={'MIA_PRUNING_CACHE': str(tmp_path / 'cache'), **env})
    assert code == 2 and len(err) == 1 and msg in err[0], err
    assert len(err[0]) < 300  # the 5,000 digits are not echoed
    assert not out.exists() and not (tmp_path / 'cache').exists()  # nothing trained, nothing written


def test_a_nul_byte_in_a_path_parameter_is_named_before_any_work(tmp_path):
    spec = {'name': 'g', 'fixed': {**BASE, 'cache_dir': str(tmp_path / 'a\x00b')}}
    with pytest.raises(ValueError, match=r'parameter cache_dir holds a NUL byte'):
        G.run_grid(spec, out_dir=tmp_path / 'out', progress=False)
    assert not (tmp_path / 'out').exists()


def test_a_deeply_nested_yaml_spec_is_one_line_exit_2(tmp_path):
    (tmp_path / 'deep.yaml').write_text('fixed: ' + '{x: ' * 1000 + '1' + '}' * 1000 + '\n')
    assert (tmp_path / 'deep.yaml').stat().st_size < 6000
    code, err = cli('grid', str(tmp_path / 'deep.yaml'), '--out', str(tmp_path / 'out'))
    assert code == 2 and len(err) == 1 and 'nested too deeply' in err[0], err


# ---------------------------------------------------------------- the cache: permissions and a full disk
def test_an_entry_that_cannot_be_read_is_never_deleted(tmp_path, monkeypatch):
    cache = ArtifactCache(tmp_path / 'cache')
    key = {'a': 1}
    path = cache.get_or_build('splits', key, lambda d: (d / 'x.txt').write_text('data'))
    before = sorted(p.name for p in path.iterdir())
    real = Path.read_text
    def refuse(self, *a, **k):  # what another user's entry (mode 600) is for this user (root reads anything: simulated)
        if self.name == 'manifest.json': raise PermissionError(errno.EACCES, 'Permission denied', str(self))
        return real(self, *a, **k)
    monkeypatch.setattr(Path, 'read_text', refuse)
    with pytest.raises(PermissionError, match='cannot be read .*it is left as it is'):
        cache.get_or_build('splits', key, lambda d: (d / 'x.txt').write_text('rebuilt'))
    monkeypatch.setattr(Path, 'read_text', real)
    assert sorted(p.name for p in path.iterdir()) == before and (path / 'x.txt').read_text() == 'data'


def test_cache_entries_get_the_modes_open_and_mkdir_would_give_them(tmp_path):
    "Not mkstemp's 600 and mkdtemp's 700: a cache shared by a group stays readable by it."
    import mia_pruning.core as C
    old = os.umask(C.UMASK)  # the umask the module read at import
    try:
        path = ArtifactCache(tmp_path / 'cache').get_or_build('splits', {'b': 2}, lambda d: save_json(d / 'x.json', {}))
        assert oct(path.stat().st_mode & 0o777) == oct(0o777 & ~C.UMASK)
        assert oct((path / 'x.json').stat().st_mode & 0o777) == oct(0o666 & ~C.UMASK)
    finally: os.umask(old)


def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / 'params.json'; save_json(target, {'old': True})
    def full(fd): raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(os, 'fsync', full)
    with pytest.raises(OSError) as e: save_json(target, {'new': True})
    assert str(target) in str(e.value) and 'No space left on device' in str(e.value) and e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {'old': True} and [p.name for p in tmp_path.iterdir()] == ['params.json']


# ---------------------------------------------------------------- a forged entry heals, as every cache entry does
def test_a_forged_attack_state_entry_heals_itself(tmp_path):
    cache = ArtifactCache(tmp_path / 'cache')
    built = []
    def build(d):
        built.append(1); save_arrays(d / 'scores.npz', s=np.arange(3.0)); save_json(d / 'metrics.json', {})
    read = lambda e: load_arrays(e / 'scores.npz')
    assert (cache.read_or_build('attack_state', {'k': 1}, build, read)['s'] == np.arange(3.0)).all()
    entry = cache.entry('attack_state', {'k': 1})
    atomic_write(entry / 'scores.npz', lambda f: np.savez(f, s=np.array([{'x': 1}], dtype=object)))  # a pickled object array
    man = json.loads((entry / 'manifest.json').read_text())
    man['files']['scores.npz'] = {'size': (entry / 'scores.npz').stat().st_size, 'sha256': R.sha256_file(entry / 'scores.npz')}
    (entry / 'manifest.json').write_text(json.dumps(man))  # the manifest forged to match
    with pytest.warns(UserWarning, match='corrupt or incomplete; rebuilding'):
        again = cache.read_or_build('attack_state', {'k': 1}, build, read)
    assert (again['s'] == np.arange(3.0)).all() and len(built) == 2
