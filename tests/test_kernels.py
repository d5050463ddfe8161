"""Forked kernels (mia_pruning.kernels): the same cell, the same numbers and the same process as a fresh kernel; dies with its driver."""
import json, os, signal, subprocess, sys, textwrap, time
from pathlib import Path
import nbformat
import pytest
from mia_pruning import kernels as K
from mia_pruning.runner import execute_cell, load_template
from mia_pruning.pipeline import cell_id

pytestmark = pytest.mark.skipif(not K.can_fork(), reason='kernels are forked on Linux only')


def template(body: str) -> str:
    nb = nbformat.v4.new_notebook(metadata={'kernelspec': {'name': 'python3', 'display_name': 'python3', 'language': 'python'}})
    p = nbformat.v4.new_code_cell("out_dir = ''\ncell = ''"); p.metadata['tags'] = ['parameters']
    nb.cells = [p, nbformat.v4.new_code_cell(textwrap.dedent(body))]
    return nbformat.writes(nb)


def gone(pid: int) -> bool:
    "The process has ended (a zombie waiting for init to reap it counts as ended)."
    try: return Path(f'/proc/{pid}/stat').read_text().split(') ')[1][0] in 'ZX'
    except (FileNotFoundError, IndexError): return True


def wait_until(cond, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond(): return
        time.sleep(0.02)
    pytest.fail(f'timed out after {timeout} s waiting for {what}')


# what a cell can see of its process; written as a complete run folder so that execute_cell certifies it
PROBE = '''
import json, os, sys, pathlib, numpy as np, torch
d = pathlib.Path(out_dir)
seen = {'cwd': os.path.realpath(os.getcwd()) == os.path.realpath(out_dir), 'own_session': os.getsid(0) == os.getpid(),
        'omp': os.environ.get('OMP_NUM_THREADS'), 'torch_threads': torch.get_num_threads(), 'probe': os.environ.get('MIA_TEST_PROBE'),
        'parent_pid_var': os.environ.get('JPY_PARENT_PID') == str(DRIVER), 'argv0_ipykernel': 'ipykernel_launcher' in ' '.join(sys.orig_argv)}
(d / 'seen.json').write_text(json.dumps(seen)); (d / 'np.json').write_text(json.dumps(np.random.rand(3).tolist()))
(d / 'params.json').write_text(json.dumps({'params': {}, 'provenance': {'cell_id': cell}}))
(d / 'rows.json').write_text('[]'); np.savez(d / 'scores.npz', a=np.ones(2)); (d / 'metrics.json').write_text('{}')
'''


def test_a_forked_kernel_is_the_process_a_fresh_one_is(tmp_path, monkeypatch):
    monkeypatch.setenv('MIA_TEST_PROBE', 'seen')
    tmpl = template(PROBE.replace('DRIVER', str(os.getpid())))
    seen, draws = {}, {}
    for mode in ('fresh', 'forked', 'forked'):
        for threads in (1, 2):
            run = tmp_path / f'{mode}{threads}{len(seen)}'
            res = execute_cell({'cell_id': 'c', 'params': {'cell': 'c'}, 'run_dir': str(run), 'template': tmpl, 'threads': threads, 'kernels': mode})
            assert res['status'] == 'ok' and res['kernel'] == mode, res
            seen[(mode, threads, len(seen))] = json.loads((run / 'seen.json').read_text())
            draws[run.name] = tuple(json.loads((run / 'np.json').read_text()))
    fresh = {t: v for (m, t, _), v in seen.items() if m == 'fresh'}
    for (m, t, _), v in seen.items():
        assert v == fresh[t], (m, t, v, fresh[t])  # the same as a fresh kernel with the same threads
    assert fresh[1]['omp'] == '1' and fresh[1]['torch_threads'] == 1 and fresh[2]['torch_threads'] == 2
    assert all(fresh[1][k] for k in ('cwd', 'own_session', 'parent_pid_var', 'argv0_ipykernel')) and fresh[1]['probe'] == 'seen'
    assert len(set(draws.values())) == len(draws), 'numpy global draws repeat across forked kernels (not freshly seeded)'


def test_forked_and_fresh_kernels_give_byte_identical_results_for_a_real_cell(tmp_path):
    from mia_pruning.bench import cell_cost_params
    params = {**cell_cost_params(), 'cache_dir': str(tmp_path / 'cache')}
    tmpl = load_template()
    out = {}
    for mode in ('fresh', 'forked'):  # the fresh one trains and caches the models, the forked one reads them
        run = tmp_path / mode
        res = execute_cell({'cell_id': cell_id(params), 'params': params, 'run_dir': str(run), 'template': tmpl, 'threads': 1, 'kernels': mode})
        assert res['status'] == 'ok' and res['kernel'] == mode, res
        out[mode] = {f: (run / f).read_bytes() for f in ('metrics.json', 'rows.json', 'scores.npz')}
    assert out['fresh'] == out['forked']


DRIVER = '''
import sys, json
from mia_pruning.runner import execute_cell
task = json.loads(sys.argv[1])
print(json.dumps(execute_cell(task)), flush=True)
'''
SLEEPER = '''
import os, time, pathlib
pathlib.Path(out_dir, 'kernel.pid').write_text(str(os.getpid()))
time.sleep(120)
pathlib.Path(out_dir, 'metrics.json').write_text('{}')
'''


def test_a_forked_kernel_and_its_server_die_with_their_driver(tmp_path):
    run = tmp_path / 'run'
    task = {'cell_id': 'c', 'params': {'cell': 'c'}, 'run_dir': str(run), 'template': template(SLEEPER), 'kernels': 'forked', 'threads': 1}
    drv = subprocess.Popen([sys.executable, '-c', DRIVER, json.dumps(task)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try: wait_until(lambda: (run / 'kernel.pid').exists() and (run / 'kernel.pid').read_text(), 180, 'the kernel to start')
    finally: drv.kill(); drv.wait()
    pid = int((run / 'kernel.pid').read_text())
    server = int(Path(f'/proc/{pid}/stat').read_text().split(') ')[1].split()[1]) if not gone(pid) else None
    wait_until(lambda: gone(pid), 3, 'the kernel to end after its driver was killed')
    if server is not None: wait_until(lambda: gone(server), 3, 'the fork server to end after its driver was killed')
    assert not (run / 'metrics.json').exists()


def test_a_timeout_ends_a_forked_kernel_and_fails_the_cell(tmp_path):
    run = tmp_path / 'run'
    res = execute_cell({'cell_id': 'c', 'params': {'cell': 'c'}, 'run_dir': str(run), 'template': template(SLEEPER),
                        'kernels': 'forked', 'threads': 1, 'timeout': 3})
    assert res['status'] == 'failed' and res['kernel'] == 'forked' and 'timed out' in res['error'].lower(), res
    pid = int((run / 'kernel.pid').read_text())
    assert gone(pid), 'execute_cell returned while the kernel it timed out still ran'  # ended before the result, not after


@pytest.mark.parametrize('what', ['start', 'fork'])
def test_a_server_that_cannot_start_or_fork_leaves_the_cell_to_a_fresh_guarded_kernel(what, tmp_path, monkeypatch):
    if what == 'start':
        def broken(env=None, preload=None): raise RuntimeError('the kernel fork server did not start: boom')
        monkeypatch.setattr(K, 'fork_server', broken)
    else:
        def no_fork(self, argv, env, cwd): raise OSError('fork failed: [Errno 12] Cannot allocate memory')
        monkeypatch.setattr(K.ForkServer, 'spawn', no_fork)
    body = PROBE.replace('DRIVER', str(os.getpid())) + "\n(d / 'ppid').write_text(str(os.getppid()))"
    res = execute_cell({'cell_id': 'c', 'params': {'cell': 'c'}, 'run_dir': str(tmp_path / 'r'), 'template': template(body), 'kernels': 'forked'})
    why = 'the kernel fork server did not start: boom' if what == 'start' else 'fork failed: [Errno 12] Cannot allocate memory'
    assert res['status'] == 'ok' and res['kernel'] == f'fresh (the fork server failed: {why})', res
    assert int((tmp_path / 'r' / 'ppid').read_text()) == os.getpid()  # a fresh kernel, our child, with the runner's guard


def test_bad_kernels_option_is_refused_before_anything_runs(tmp_path):
    from mia_pruning.grid import run_grid
    with pytest.raises(ValueError, match=r"kernels must be one of \('forked', 'fresh'\), got 'warm'"):
        run_grid({'name': 'k', 'fixed': {'dataset': 'digits'}}, out_dir=tmp_path / 'out', kernels='warm')
    assert not (tmp_path / 'out').exists()
    res = execute_cell({'cell_id': 'c', 'params': {}, 'run_dir': str(tmp_path / 'r'), 'template': template('x = 1'), 'kernels': 'warm'})
    assert res['status'] == 'failed' and "kernels must be one of ('forked', 'fresh'), got 'warm'" in res['error']
    cli = subprocess.run([sys.executable, '-c', 'import sys; from mia_pruning.cli import main; sys.exit(main())', 'grid', '--preset', 'smoke', '--kernels', 'warm'], capture_output=True, text=True)
    assert cli.returncode == 2 and "invalid choice: 'warm'" in cli.stderr


def test_a_server_serves_one_environment_and_one_version_of_the_code(monkeypatch):
    env, light = dict(os.environ, MIA_TEST_SERVER='a'), ('json',)  # (a server that imports little starts in a blink)
    a = K.fork_server(env, light)
    assert K.fork_server({**env, 'JPY_SESSION_NAME': 'x'}, light) is a  # jupyter's per-kernel variables do not matter
    assert a.loaded == ['json']
    b = K.fork_server({**env, 'MIA_TEST_SERVER': 'b'}, light)
    assert b is not a and b.pid != a.pid
    stamp = K._source_stamp()
    monkeypatch.setattr(K, '_source_stamp', lambda: stamp + [('edited.py', 1, 1)])  # a file of the package changed
    edited = K.fork_server(env, light)
    assert edited is not a
    monkeypatch.undo()
    a.proc.kill(); a.proc.wait()
    c = K.fork_server(env, light)  # a dead server is replaced
    assert c is not a and c.alive()
    for s in (b, c, edited): s.close()
    assert not b.alive() and not c.alive() and not edited.alive()


def test_a_server_whose_imports_touch_cuda_refuses_to_fork(tmp_path):
    "A forked child of a process that initialised CUDA's driver could not use the GPU: such a server must not start."
    (tmp_path / 'asks_cuda.py').write_text('import torch\ntorch.cuda.device_count()\n')
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(tmp_path), os.environ.get('PYTHONPATH', '')])}
    with pytest.raises(RuntimeError, match='CUDA was initialised while importing the preload'):
        K.ForkServer(env, preload=('torch', 'asks_cuda'))
    ok = K.ForkServer(env, preload=('torch',))  # torch itself asks nothing
    assert ok.loaded == ['torch']; ok.close()


def test_idle_servers_are_capped_and_busy_ones_kept(monkeypatch):
    monkeypatch.setattr(K, 'MAX_IDLE_SERVERS', 0)  # none kept idle besides the one in use
    light = ('json',)
    a = K.fork_server({**os.environ, 'MIA_TEST_IDLE': 'a'}, light)
    a.live += 1  # as if a kernel of it were running
    b = K.fork_server({**os.environ, 'MIA_TEST_IDLE': 'b'}, light)
    c = K.fork_server({**os.environ, 'MIA_TEST_IDLE': 'c'}, light)
    assert a.alive() and not b.alive() and c.alive()  # the idle b went; the busy a stays
    a.live -= 1
    for s in (a, c): s.close()
