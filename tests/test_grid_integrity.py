"""Evidence integrity of a grid's output folder (issue 11): no run looks complete unless it is, no result is lost,
no input silently replaced, and every odd state ends in one clear line.

- a grid killed with SIGKILL while a cell is in its attacks (the real experiment notebook) leaves no false-complete
  run, and its rerun completes every cell exactly once, each with a finished notebook;
- `--no-resume` killed after a few seconds keeps every previously complete run;
- Ctrl-C and SIGTERM end `mia-pruning grid` with one line, exit 130 (143 for SIGTERM), the lock released and no kernel left working;
- a complete run computed from other data than is found now is refused on resume;
- collect/report: damaged runs are left out with a warning naming them; a changed spec never mixes old cells into
  the summary; a full disk or a read-only folder is one line naming the file, and nothing written before is damaged;
- hostile YAML (a duplicated key, an alias bomb) is refused by the command line within a second, in little memory;
- validating 10,000 cells is fast (time printed; < 5 s asserted only as a guard against a blow-up);
- no two cells of the paper preset have equal resolved parameters.
Bad inputs that must fail before anything is written are in test_reliability's catalogue.
"""
import errno, json, os, shutil, signal, subprocess, sys, textwrap, time, warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mia_pruning import grid as G
from mia_pruning import runs as R
from mia_pruning import report as REP
from mia_pruning.core import save_json, load_json, config_hash
from mia_pruning.pipeline import NON_SEMANTIC
from test_grid import stub_template, read_log, BASE
from test_reliability import snapshot, diff, TINY

CLI = [sys.executable, '-c', 'import sys; from mia_pruning.cli import main; sys.exit(main())']


@pytest.fixture
def stub(tmp_path, monkeypatch):
    monkeypatch.setenv('MIA_TEST_LOG', str(tmp_path / 'log.txt'))
    monkeypatch.setenv('MIA_PRUNING_CACHE', str(tmp_path / 'cache'))
    return stub_template(tmp_path / 'stub.ipynb', fail_seed=13)


def wait_for(cond, timeout=120, proc=None, what='the condition'):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond(): return
        if proc is not None and proc.poll() is not None: pytest.fail(f'the process ended before {what}: {proc.stderr.read()[-3000:] if proc.stderr else ""}')
        time.sleep(0.05)
    pytest.fail(f'timed out waiting for {what}')


def complete_runs(out: Path) -> set:
    return {p.name for p in (out / 'runs').iterdir() if not p.name.startswith('.') and R.is_complete(p)} if (out / 'runs').is_dir() else set()


# ---------------------------------------------------------------- item 1: SIGKILL during a cell's attacks (real notebook)
SLOW_ATTACKS = '''
import os, sys, time
if os.environ.get('MIA_TEST_SLOW_ATTACKS') and any('ipykernel' in a for a in getattr(sys, 'orig_argv', sys.argv)):
    import mia_pruning.attacks as A  # before the pipeline binds run_attacks: the kernel's pipeline gets the slow one
    _real = A.run_attacks
    def run_attacks(*a, **k):
        r = _real(*a, **k)
        with open(os.environ['MIA_TEST_ATTACK_LOG'], 'a') as f: f.write(f'attacks {os.getcwd()}\\n')
        time.sleep(float(os.environ['MIA_TEST_SLOW_ATTACKS']))  # a wide window to kill in, after the attacks computed
        return r
    A.run_attacks = run_attacks
'''


@pytest.mark.slow  # about a minute on 2 cores: three real cells through papermill
def test_sigkill_during_attacks_leaves_no_false_complete_run_and_rerun_completes_each_cell_once(tmp_path, monkeypatch):
    site = tmp_path / 'site'; site.mkdir()
    (site / 'sitecustomize.py').write_text(SLOW_ATTACKS)
    out, alog = tmp_path / 'out', tmp_path / 'attacks.log'
    spec = {'name': 'k', 'fixed': {k: v for k, v in TINY.items() if k != 'sparsity'}, 'axes': {'sparsity': [0.5, 0.6]}}
    first, second = [c.id for c in G.expand_cells(spec)]
    (tmp_path / 'k.yaml').write_text(json.dumps(spec))  # JSON is YAML
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(site), os.environ.get('PYTHONPATH', '')]),
           'MIA_TEST_SLOW_ATTACKS': '3', 'MIA_TEST_ATTACK_LOG': str(alog), 'MIA_PRUNING_CACHE': str(tmp_path / 'cache')}
    proc = subprocess.Popen(CLI + ['grid', str(tmp_path / 'k.yaml'), '--out', str(out), '--workers', '1', '--no-progress', '--no-report'],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    in_second = lambda: alog.exists() and any(l.endswith(second) for l in alog.read_text().splitlines())
    try: wait_for(in_second, 300, proc, "the second cell's attacks")  # the first cell is complete by then
    finally: os.kill(proc.pid, signal.SIGKILL); proc.wait()
    killed = out / 'runs' / second
    time.sleep(5)  # longer than the rest of the cell takes: a kernel that outlived its grid would write metrics.json meanwhile
    assert not (killed / 'metrics.json').exists(), 'the kernel outlived the grid and finished the cell'
    assert complete_runs(out) == {first} and not R.is_complete(killed)
    assert R.verify_run(out / 'runs' / first) == []

    monkeypatch.setenv('MIA_PRUNING_CACHE', str(tmp_path / 'cache'))
    with pytest.warns(UserWarning, match='stale lock'):
        rep = G.run_grid(spec, out_dir=out, workers=1, progress=False)
    assert rep.ok and rep.skipped == [first] and rep.ran == [second], rep
    for cid in (first, second):  # complete exactly once, each with a finished notebook (every code cell ran, an end time)
        assert R.is_complete(out / 'runs' / cid) and R.verify_run(out / 'runs' / cid) == []
        assert R.notebook_problem(out / 'runs' / cid / 'run.ipynb') is None
    df = pd.read_csv(out / 'summary.csv')
    assert sorted(df.cell_id.unique()) == sorted([first, second]) and len(df) == 2 * 2 * 3


# ---------------------------------------------------------------- item 2: --no-resume never destroys results first
def test_no_resume_killed_keeps_every_previously_complete_run(tmp_path, stub, monkeypatch):
    out, log = tmp_path / 'out', tmp_path / 'log.txt'
    spec = {'name': 'nr', 'fixed': BASE, 'axes': {'seed': [1, 2, 3, 4]}}
    ids = [c.id for c in G.expand_cells(spec)]
    assert G.run_grid(spec, out_dir=out, template=stub, workers=1, progress=False).ok
    before = {cid: R.sha256_file(out / 'runs' / cid / 'run.ipynb') for cid in ids}
    summary_before = (out / 'summary.csv').read_bytes()
    n = len(read_log(log))
    (tmp_path / 'nr.yaml').write_text(json.dumps(spec))
    env = {**os.environ, 'MIA_PRUNING_TEMPLATE': str(stub), 'MIA_TEST_SLEEP': '1.5'}
    proc = subprocess.Popen(CLI + ['grid', str(tmp_path / 'nr.yaml'), '--out', str(out), '--workers', '1', '--no-resume',
                                   '--no-progress', '--no-report'], env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try: wait_for(lambda: len([l for l in read_log(log)[n:] if l[0] == 'done']) >= 1 and
                  len([l for l in read_log(log)[n:] if l[0] == 'start']) >= 2, 120, proc, 'one replaced run and one more started')
    finally: os.kill(proc.pid, signal.SIGKILL); proc.wait()
    time.sleep(0.5)
    assert complete_runs(out) == set(ids)  # every run is complete: the old one or its complete replacement
    replaced = {cid for cid in ids if R.sha256_file(out / 'runs' / cid / 'run.ipynb') != before[cid]}
    assert 1 <= len(replaced) < len(ids), replaced
    assert (out / 'summary.csv').read_bytes() == summary_before  # still describes complete runs only
    with pytest.warns(UserWarning, match='stale lock'):  # the killed grid could not release it
        rep = G.run_grid(spec, out_dir=out, template=stub, workers=1, progress=False, resume=True)  # the next start tidies up
    assert rep.ok and sorted(rep.skipped) == sorted(ids) and not (out / 'runs' / R.STAGING).exists()


def test_no_resume_failure_keeps_the_previous_run(tmp_path, stub):
    out = tmp_path / 'out'
    spec = {'name': 'g', 'fixed': {**BASE, 'seed': 13}}
    cid = G.expand_cells(spec)[0].id
    rd = out / 'runs' / cid
    ok = stub_template(tmp_path / 'ok.ipynb')  # seed 13 does not fail here
    assert G.run_grid(spec, out_dir=out, template=ok, workers=1, progress=False).ok
    kept = snapshot(rd)
    rep = G.run_grid(spec, out_dir=out, template=stub, workers=1, progress=False, resume=False)  # now it fails
    assert list(rep.failed) == [cid] and 'asked to fail' in rep.failed[cid]
    assert snapshot(rd) == kept and R.is_complete(rd)  # the complete run is untouched
    assert json.loads((out / 'grid.json').read_text())['cells'][cid] == 'complete (previous run kept)'


# ---------------------------------------------------------------- item 9: Ctrl-C and SIGTERM
@pytest.mark.parametrize('sig, workers', [(signal.SIGINT, 1), (signal.SIGTERM, 2)], ids=['sigint-1-worker', 'sigterm-2-workers'])
def test_interrupt_ends_the_grid_with_one_line_and_the_lock_released(sig, workers, tmp_path, stub):
    out, log = tmp_path / 'out', tmp_path / 'log.txt'
    spec = tmp_path / 'i.yaml'
    spec.write_text('fixed: {dataset: digits, arch: mlp}\naxes: {seed: [1, 2, 3]}\n')
    env = {**os.environ, 'MIA_PRUNING_TEMPLATE': str(stub), 'MIA_TEST_SLEEP': '3'}
    proc = subprocess.Popen(CLI + ['grid', str(spec), '--out', str(out), '--workers', str(workers), '--no-progress'],
                            env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try: wait_for(lambda: any(l[0] == 'start' for l in read_log(log)), 120, proc, 'a cell to start')
    except BaseException: proc.kill(); raise
    os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=60)
    n = len(read_log(log))
    time.sleep(4)  # a kernel left working would log 'done' meanwhile
    assert proc.returncode == (143 if sig == signal.SIGTERM else 130), err  # the shell's 128 + signal number
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith('mia-pruning: interrupted') and 'Traceback' not in err, err
    assert ('SIGTERM' if sig == signal.SIGTERM else 'Ctrl-C') in lines[0]
    assert not (out / '.lock').exists()
    assert len(read_log(log)) == n and not [l for l in read_log(log) if l[0] == 'done'], 'a kernel kept working'
    assert complete_runs(out) == set()  # the interrupted cells are not complete


# ---------------------------------------------------------------- item 3: the data a complete run was computed from
def test_resume_refuses_a_run_computed_from_other_data(tmp_path, stub):
    from mia_pruning.data import dataset_fingerprint
    out = tmp_path / 'out'
    spec = {'name': 'g', 'fixed': BASE}
    cid = G.expand_cells(spec)[0].id
    assert G.run_grid(spec, out_dir=out, template=stub, workers=1, progress=False).ok
    rd = out / 'runs' / cid
    now = dataset_fingerprint('digits')
    def record(h):  # the run's params.json as if computed from data with content hash h (then certified again)
        pj = load_json(rd / 'params.json'); pj['provenance']['data'] = {'name': 'digits', 'source': {'path': '/old/copy'}, 'content_hash': h}
        save_json(rd / 'params.json', pj); R.finish_run(rd, cid)
    record(now['content_hash'])  # the same data: kept
    assert G.run_grid(spec, out_dir=out, template=stub, workers=1, progress=False).skipped == [cid]
    record('0' * 64)
    before = snapshot(out)
    with pytest.raises(ValueError) as e:
        G.run_grid(spec, out_dir=out, template=stub, workers=1, progress=False)
    msg = str(e.value)
    assert 'computed from other data than is found now; nothing was run' in msg and str(rd) in msg
    assert '0000000000000000' in msg and now['content_hash'][:16] in msg and '/old/copy' in msg
    assert not diff(before, snapshot(out))
    rep = G.run_grid(spec, out_dir=out, template=stub, workers=1, progress=False, resume=False)  # recomputed with today's data
    assert rep.ran == [cid] and R.is_complete(rd)


# ---------------------------------------------------------------- item 8: reports tell the truth about their inputs
def _runs_of(tmp_path, stub, seeds):
    out = tmp_path / 'out'
    rep = G.run_grid({'name': 'g', 'fixed': BASE, 'axes': {'seed': seeds}}, out_dir=out, template=stub, workers=1, progress=False)
    assert rep.ok
    return out, {c: out / 'runs' / c for c in rep.cell_ids}


def test_collect_leaves_out_damaged_runs_with_a_warning_naming_them(tmp_path, stub, capsys):
    from mia_pruning import cli
    out, rd = _runs_of(tmp_path, stub, [1, 2, 3])
    a, b, c = rd
    (rd[a] / 'metrics.json').write_text('{"pruned/conf/attack_acc": ')  # corrupt
    (rd[b] / 'scores.npz').unlink()                                      # missing
    with pytest.warns(UserWarning) as caught:
        df = G.collect(out)
    msgs = sorted(str(w.message) for w in caught)
    assert len(msgs) == 2 and any(a in m and 'metrics.json does not match its completion record' in m for m in msgs) \
        and any(b in m and 'scores.npz is missing' in m for m in msgs), msgs
    assert sorted(df.cell_id.unique()) == [c]
    code = cli.main(['report', str(out)])
    text, err = capsys.readouterr()
    assert code == 0 and f'{a}' in err and 'scores.npz is missing' in err and 'from 1 complete run(s)' in text
    rep = G.run_grid({'name': 'g', 'fixed': BASE, 'axes': {'seed': [1, 2, 3]}}, out_dir=out, template=stub, workers=1, progress=False)
    assert sorted(rep.ran) == sorted([a, b]) and rep.skipped == [c]  # damaged runs are redone, not trusted


def test_summary_and_grid_json_describe_the_current_spec(tmp_path, stub):
    out, rd = _runs_of(tmp_path, stub, [1, 2])
    old = sorted(rd)
    rep = G.run_grid({'name': 'g', 'fixed': BASE, 'axes': {'seed': [2, 3]}}, out_dir=out, template=stub, workers=1, progress=False)
    ids = rep.cell_ids
    gone = sorted(set(old) - set(ids))
    assert rep.ok and len(gone) == 1 and rep.not_in_spec == gone
    df = pd.read_csv(out / 'summary.csv')
    assert sorted(df.cell_id.unique()) == sorted(ids) and set(df.seed) == {2, 3}  # no cell of the old spec mixed in
    g = json.loads((out / 'grid.json').read_text())
    assert sorted(g['cells']) == sorted(ids) and g['not_in_spec'] == gone and g['spec']['axes'] == {'seed': [2, 3]}
    assert R.is_complete(out / 'runs' / gone[0])  # kept on disk, listed apart
    with pytest.warns(UserWarning, match='not cells of the current spec'):
        assert sorted(G.collect(out).cell_id.unique()) == sorted(ids)


def test_full_disk_while_writing_the_summary_is_one_line_and_damages_nothing(tmp_path, stub, monkeypatch, capsys):
    from mia_pruning import cli, core
    out, _ = _runs_of(tmp_path, stub, [1, 2])
    old = (out / 'summary.csv').read_bytes()
    before = snapshot(out)
    def full(path, write):
        raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(R, 'atomic_write', full)
    monkeypatch.setattr(core, 'atomic_write', full)  # the report's figures and tables too
    with pytest.raises(OSError) as e: G.collect(out)
    assert e.value.errno == errno.ENOSPC and str(out / 'summary.csv') in str(e.value)
    code = cli.main(['report', str(out)])
    text, err = capsys.readouterr()
    assert code == 1 and err.count('\n') == 1 and 'No space left on device' in err and 'summary.csv' in err and 'Traceback' not in err
    assert (out / 'summary.csv').read_bytes() == old and not diff(before, snapshot(out))
    with pytest.raises(OSError, match='cannot write .*figures/headline_'): REP.make_report(out)
    assert not diff(before, snapshot(out))


def test_read_only_output_folder_is_one_line_naming_the_file(tmp_path, stub, monkeypatch, capsys):
    from mia_pruning import cli, core
    out, _ = _runs_of(tmp_path, stub, [1])
    REP.make_report(out)
    before = snapshot(out)
    if os.geteuid() == 0:  # root writes anywhere: refuse writes the way a read-only folder does
        def denied(path, write):
            raise PermissionError(errno.EACCES, 'Permission denied', str(Path(path).parent / f'.{Path(path).name}.tmp'))
        monkeypatch.setattr(R, 'atomic_write', denied); monkeypatch.setattr(core, 'atomic_write', denied)
    else:
        for p in [out, *[q for q in out.rglob('*') if q.is_dir()]]: p.chmod(0o555)
    try:
        code = cli.main(['report', str(out)])
        text, err = capsys.readouterr()
    finally:
        for p in [out, *[q for q in out.rglob('*') if q.is_dir()]]: p.chmod(0o755)
    assert code == 1 and err.startswith('mia-pruning: error: ') and err.count('\n') == 1 and 'Traceback' not in err
    assert 'Permission denied' in err and str(out / 'summary.csv') in err
    assert not diff(before, snapshot(out))


# ---------------------------------------------------------------- item 4: hostile YAML through the command line
@pytest.mark.parametrize('name, text, msg', [
    ('dup', 'name: g\nfixed: {dataset: digits}\naxes:\n  sparsity: [0.5]\n  sparsity: [0.9]\n', "the key 'sparsity' is given twice"),
    ('bomb', None, 'the alias *a is not allowed'),
])
def test_hostile_yaml_is_refused_by_the_cli_within_a_second_in_little_memory(name, text, msg, tmp_path):
    from test_reliability import ALIAS_BOMB
    f = tmp_path / f'{name}.yaml'
    f.write_text(text or ALIAS_BOMB)
    code = ('import sys, time; t = time.time()\nfrom mia_pruning.cli import main\nrc = main(sys.argv[1:])\n'
            'hwm = [l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")][0]\n'  # peak RSS of this process, kB
            'print(f"{time.time() - t:.3f} {hwm}", file=sys.stderr); sys.exit(rc)')
    r = subprocess.run([sys.executable, '-c', code, 'grid', str(f), '--out', str(tmp_path / 'out')], capture_output=True, text=True, timeout=120)
    seconds, rss_kb = map(float, r.stderr.strip().splitlines()[-1].split())
    print(f'{name}: refused in {seconds:.3f} s, peak RSS {rss_kb / 1024:.0f} MiB')
    assert r.returncode == 2 and msg in r.stderr and str(f) in r.stderr and 'Traceback' not in r.stderr
    assert seconds < 1.0, f'{seconds} s'  # read before torch or the pipeline is imported
    assert rss_kb < 200 * 1024  # an expanded bomb would take gigabytes; the interpreter and PyYAML take ~20 MiB (torch: ~300)
    assert not (tmp_path / 'out').exists()


# ---------------------------------------------------------------- item 4: validating many cells stays fast
def test_validating_10000_cells_is_fast():
    spec = {'name': 'big', 'fixed': {'dataset': 'digits', 'arch': 'mlp'},
            'axes': {'seed': list(range(100)), 'sparsity': [round(i / 100, 2) for i in range(100)]}}
    G.expand_cells({'name': 'warm', 'fixed': {'dataset': 'digits', 'arch': 'mlp'}})  # imports and the model probe
    t0 = time.perf_counter()
    cells = G.expand_cells(spec)
    dt = time.perf_counter() - t0
    print(f'validated {len(cells):,} cells in {dt:.2f} s ({dt / len(cells) * 1e6:.0f} us per cell)')
    assert len(cells) == 10_000 and len({c.id for c in cells}) == 10_000
    # a guard against a blow-up (quadratic in the cells would take minutes), not the speed target: that target (well under
    # 1 s) is not met yet; about 2 s here on an idle core, 4 s on a loaded one, almost all of it in pipeline.validate_params
    # (run twice per cell: directly and inside cell_id) and config_hash
    assert dt < 15
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match='has 1,000,000 cells'):
        G.expand_cells({**spec, 'axes': {**spec['axes'], 'epochs': list(range(100))}})
    assert time.perf_counter() - t0 < 1  # the cap is checked from the axis lengths, before any cell is built


# ---------------------------------------------------------------- issue 10 item 4: one cell per resolved parameter set
def test_paper_preset_has_no_two_cells_with_equal_resolved_parameters():
    from mia_pruning.pipeline import resolve_params
    cells = G.expand_cells('paper')
    keys = {}
    for c in cells:
        r = {k: v for k, v in resolve_params(c.params).items() if k not in NON_SEMANTIC}
        keys.setdefault(config_hash(r, 16), []).append(c.id)
    assert [ids for ids in keys.values() if len(ids) > 1] == []
    assert len(keys) == len(cells)


def test_equal_cells_are_merged_with_a_note_in_grid_json(tmp_path, stub, capsys):
    spec = {'name': 'g', 'fixed': {**BASE, 'sparsity': 0.7}, 'axes': {'shadow_sparsity': [-1.0, 0.7, 0.5]}}
    rep = G.run_grid(spec, out_dir=tmp_path / 'out', template=stub, workers=1, progress=False)
    assert rep.ok and len(rep.cell_ids) == 2 and len(rep.ran) == 2
    assert len(rep.merged) == 1 and "{'shadow_sparsity': 0.7}" in rep.merged[0] and 'run once' in rep.merged[0]
    assert f'note: {rep.merged[0]}' in capsys.readouterr().out
    assert json.loads((tmp_path / 'out' / 'grid.json').read_text())['merged'] == rep.merged


def test_output_folder_may_be_a_link_but_nothing_below_it(tmp_path, stub):
    (tmp_path / 'real').mkdir(); (tmp_path / 'link').symlink_to(tmp_path / 'real')  # outputs on another disk, say
    rep = G.run_grid({'name': 'g', 'fixed': BASE}, out_dir=tmp_path / 'link', template=stub, workers=1, progress=False)
    assert rep.ok and R.is_complete(tmp_path / 'real' / 'runs' / rep.ran[0])
    (tmp_path / 'real' / 'runs').rename(tmp_path / 'moved'); (tmp_path / 'real' / 'runs').symlink_to(tmp_path / 'moved')
    with pytest.raises(ValueError, match='runs.* is a symbolic link'):
        G.run_grid({'name': 'g', 'fixed': BASE}, out_dir=tmp_path / 'link', template=stub, workers=1, progress=False)
