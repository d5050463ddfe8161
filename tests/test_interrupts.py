"""An interrupt is always honoured (issue 22, item 3): SIGINT or SIGTERM in any phase of `mia-pruning grid` (planning,
model tasks, cells, collect, report) ends it with one line and status 130 (Ctrl-C) or 143 (SIGTERM), nothing reported
after the signal, the lock released and nothing certified that is not complete.

Each phase is hit deterministically: a driver script wraps the function that starts the phase so that it signals
the grid process itself and then waits; in the cells phase the cell's own kernel sends the signal. No timing luck.
"""
import os, subprocess, sys, textwrap
from pathlib import Path

import nbformat
import pytest

from mia_pruning import runs as R
from test_grid import stub_template, read_log

DRIVER = textwrap.dedent('''
    import os, sys, signal, time
    if __name__ == '__main__':  # (pool workers are spawned: they import this file without running it)
        phase, sig = sys.argv[1], getattr(signal, sys.argv[2])
        os.environ['MIA_TEST_GRID_PID'] = str(os.getpid())
        from mia_pruning import grid as G, cli
        def fire(real):
            def f(*a, **k):
                with open(os.environ['MIA_TEST_LOG'], 'a') as log: log.write(f'fired {phase}\\n')
                os.kill(os.getpid(), sig); time.sleep(30)  # the signal arrives here; nothing after it may run
                return real(*a, **k)
            return f
        if phase == 'planning': G.plan_tasks = fire(G.plan_tasks)
        elif phase == 'models': G.run_model_task = fire(G.run_model_task)
        elif phase == 'collect': G.collect = fire(G.collect)
        elif phase == 'report':
            import mia_pruning.report as REP
            REP.make_report = fire(REP.make_report)
        sys.exit(cli.main(sys.argv[3:]))
''')

SIGNAL_FROM_CELL = '''
import os, signal, time
if os.environ.get('MIA_TEST_SIGNAL_CELL'):  # the cell's kernel signals the grid while the cell runs
    with open(os.environ['MIA_TEST_LOG'], 'a') as log: log.write('fired cells\\n')
    os.kill(int(os.environ['MIA_TEST_GRID_PID']), getattr(signal, os.environ['MIA_TEST_SIGNAL_CELL'])); time.sleep(30)
'''

CASES = [('planning', 'SIGINT', 1), ('models', 'SIGTERM', 1), ('cells', 'SIGINT', 1), ('cells', 'SIGTERM', 2),
         ('collect', 'SIGTERM', 1), ('report', 'SIGINT', 1)]


def template(path: Path, with_models: bool) -> Path:
    "The stub template, with a first cell that can signal the grid; `with_models`: the grid plans real model tasks first."
    stub_template(path)
    nb = nbformat.read(str(path), as_version=4)
    nb.cells.insert(1, nbformat.v4.new_code_cell(SIGNAL_FROM_CELL + ('# run_cell: a template that runs run_cell has model tasks\n' if with_models else '')))
    nbformat.write(nb, str(path))
    return path


@pytest.mark.parametrize('phase, sig, workers', CASES, ids=[f'{p}-{s}-{w}w' for p, s, w in CASES])
def test_an_interrupt_in_any_phase_ends_the_grid_with_one_line(phase, sig, workers, tmp_path):
    out, log = tmp_path / 'out', tmp_path / 'log.txt'
    spec = tmp_path / 'i.yaml'
    spec.write_text('fixed: {dataset: digits, arch: mlp, epochs: 1, num_shadows: 1, num_references: 0}\naxes: {seed: [1, 2]}\n')
    (tmp_path / 'driver.py').write_text(DRIVER)
    tmpl = template(tmp_path / 'stub.ipynb', with_models=phase == 'models')
    env = {**os.environ, 'MIA_PRUNING_TEMPLATE': str(tmpl), 'MIA_TEST_LOG': str(log), 'MIA_PRUNING_CACHE': str(tmp_path / 'cache'),
           **({'MIA_TEST_SIGNAL_CELL': sig} if phase == 'cells' else {})}
    args = ['grid', str(spec), '--out', str(out), '--workers', str(workers), '--no-progress']
    proc = subprocess.run([sys.executable, str(tmp_path / 'driver.py'), phase, sig, *args], env=env, capture_output=True,
                          text=True, timeout=240)
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert ['fired', phase] in read_log(log), (proc.returncode, proc.stderr[-3000:])  # the signal came in the phase under test
    assert proc.returncode == {'SIGINT': 130, 'SIGTERM': 143}[sig], proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith('mia-pruning: interrupted') and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    assert ('SIGTERM' if sig == 'SIGTERM' else 'Ctrl-C') in lines[0]
    assert not (out / '.lock').exists()
    assert 'report:' not in proc.stdout and not (out / 'tables').exists() or phase == 'report', proc.stdout[-2000:]
    runs = [p for p in (out / 'runs').iterdir() if not p.name.startswith('.')] if (out / 'runs').is_dir() else []
    for rd in runs:  # nothing certified that is not complete
        if (rd / R.RECORD).exists(): assert R.verify_run(rd) == [], rd
    if phase in ('planning', 'models', 'cells'):
        assert not [l for l in read_log(log) if l[0] == 'done']  # no cell finished (in the cells phase, each was signalling)
        assert not (out / 'summary.csv').exists()
    if phase == 'collect':  # both cells finished before the signal: they stay complete, and no summary was half written
        assert len([rd for rd in runs if R.is_complete(rd)]) == 2
        assert not (out / 'summary.csv').exists()
