"""The `mia-pruning` command: parsing, exit codes (0 ok, 1 failed cells, 2 bad input), and its subcommands."""
import json, os, shutil, subprocess, sys, types
from pathlib import Path

import pandas as pd
import pytest

from mia_pruning import cli
from mia_pruning.grid import GridLock
from mia_pruning.core import save_json
from mia_pruning.runs import finish_run
import numpy as np
from mia_pruning.pipeline import CELL_DEFAULTS
from test_grid import stub_template, read_log
import torch
ABSENT_CUDA = f'cuda:{torch.cuda.device_count()}' if torch.cuda.is_available() else 'cuda'  # a device this machine lacks


def run(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def stub(tmp_path, monkeypatch):
    monkeypatch.setenv('MIA_TEST_LOG', str(tmp_path / 'log.txt'))
    monkeypatch.setenv('MIA_PRUNING_TEMPLATE', str(stub_template(tmp_path / 'stub.ipynb', fail_seed=13)))
    return tmp_path


def test_values_are_typed_after_the_defaults():
    p = cli.parse_assignments(['sparsity=1', 'seed=11', 'adaptive=TRUE', 'dense_shadows=0', 'data_root=007', 'attacks=gap,conf'])
    assert p == {'sparsity': 1.0, 'seed': 11, 'adaptive': True, 'dense_shadows': False, 'data_root': '007', 'attacks': 'gap,conf'}
    assert type(p['sparsity']) is float and type(p['seed']) is int
    for bad, msg in [(['sparsty=0.5'], "did you mean 'sparsity'"), (['seed=1.5'], 'seed takes an integer'),
                     (['sparsity=high'], 'sparsity takes a number'), (['adaptive=2'], 'true/false'),
                     (['seed'], 'expected key=value'), (['seed=1', 'seed=2'], 'given twice')]:
        with pytest.raises(ValueError, match=msg): cli.parse_assignments(bad)
    assert set(cli.parse_assignments([f'{k}={v}' for k, v in CELL_DEFAULTS.items()])) == set(CELL_DEFAULTS)


@pytest.mark.parametrize('argv, msg', [
    (['grid', '--preset', 'quik'], "unknown grid preset 'quik'"),
    (['grid'], 'give either a YAML spec or --preset NAME'),
    (['grid', 'x.yaml', '--preset', 'quick'], 'give either a YAML spec or --preset NAME'),
    (['grid', 'missing.yaml'], "grid spec file 'missing.yaml' does not exist"),
    (['grid', '--preset', 'quick', '--workers', '0'], 'workers must be a positive integer'),
    (['grid', '--preset', 'quick', '--scheduler', 'tcp://h:8786'], "executor='dask'"),
    (['run', 'sparsity=1.5'], 'sparsity'),
    (['run', 'prune_method=l1_structured', 'arch=mlp'], 'Conv2d'),
    (['run', 'defense=dropout'], "unknown defense 'dropout'"),
    (['run', 'sparsty=0.5'], "did you mean 'sparsity'"),
    (['run', 'seed=x'], 'seed takes an integer'),
    (['run', '--name', '../up', 'seed=1'], 'is not allowed'),
    (['report', 'nowhere'], 'is not a grid output folder'),
    (['run', 'dataset=digits', f'device={ABSENT_CUDA}'], f"device '{ABSENT_CUDA}'"),  # issue 11: was a traceback, exit 1
    (['run', 'dataset=digits', 'device=cuda:abc'], "device 'cuda:abc'"),
    (['run', 'dataset=digits', '--timeout', '0'], 'timeout must be a positive whole number'),
    (['run', 'dataset=digits', '--timeout', '-5'], 'timeout must be a positive whole number'),
    (['run', 'dataset=digits', '--timeout', 'nan'], 'timeout must be a positive whole number'),
    (['run', 'seed=4294967296'], 'seed'),
    (['run', 'seed=18446744073709551616'], 'seed'),
    (['run', 'threads=1025'], 'threads'),
    (['run', 'n_boot=100001'], 'n_boot'),
    (['run', 'num_shadows=257'], 'num_shadows'),
    (['run', 'num_references=1026'], 'num_references'),
    (['grid', '--preset', 'quick', '--max-cells', '10'], 'has 16 cells, more than the cap of 10'),
    (['grid', '--preset', 'quick', '--max-cells', '0'], 'max_cells must be a positive integer'),
])
def test_bad_input_exits_2_before_anything_runs(argv, msg, capsys, stub, monkeypatch):
    monkeypatch.chdir(stub)
    code, out, err = run(argv, capsys)
    assert code == 2 and msg in err and err.startswith('mia-pruning: error:')
    assert read_log(stub / 'log.txt') == [] and not (stub / 'outputs').exists()


def test_max_cells_default_is_the_grid_cap():
    from mia_pruning.gridspec import MAX_CELLS
    assert cli.MAX_CELLS_DEFAULT == MAX_CELLS and cli.build_parser().parse_args(['grid', '--preset', 'quick']).max_cells == MAX_CELLS


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e: cli.main(['grid', '--executor', 'slurm'])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e: cli.main(['frobnicate'])
    assert e.value.code == 2


def test_grid_help_names_every_preset(capsys):
    "The --preset help is written out (the parser imports no grid code); it must name every preset there is."
    from mia_pruning.gridspec import PRESETS
    with pytest.raises(SystemExit): cli.main(['grid', '--help'])
    text = ' '.join(capsys.readouterr().out.split())
    assert all(name in text for name in PRESETS), [n for n in PRESETS if n not in text]



def test_help_names_the_commands_that_need_the_dev_extra(capsys):
    with pytest.raises(SystemExit) as e: cli.main(['--help'])
    text = ' '.join(capsys.readouterr().out.split())
    assert e.value.code == 0
    assert 'Commands that need the dev extra (pip install -e ".[dev]" in a clone of the repository): notebooks.' in text
    assert 'documentation notebooks of a clone in place (mia_pruning.docs; needs the dev extra: pip install -e ".[dev]")' in text


@pytest.mark.parametrize('gone', ['execnb', 'nbdev'])
def test_notebooks_without_the_dev_extra_is_one_line_exit_2(gone, capsys, monkeypatch):
    "A plain install has neither nbdev nor execnb: the docs executor stops before any work, naming the extra."
    monkeypatch.setitem(sys.modules, gone, None)  # importing it now fails, as where it is not installed
    code, out, err = run(['notebooks', 'no_such_notebook'], capsys)  # refused before the names are read: nothing runs
    assert code == 2 and out == ''
    assert len(err.strip().splitlines()) == 1 and 'Traceback' not in err
    assert 'needs the dev extra' in err and 'missing here: ' in err and gone in err.split('missing here: ')[1]
    assert err.strip().endswith('install it in the clone: pip install -e ".[dev]"')
    with pytest.raises(SystemExit) as e: cli.main(['notebooks', '--check', 'no_such_notebook'])  # --check needs no dev extra:
    err = capsys.readouterr().err                                                                # it gets as far as the names
    assert e.value.code == 2 and 'dev extra' not in err and 'no_such_notebook' in err


def test_notebooks_without_the_dev_extra_exits_2_as_a_process():
    code = ("import sys; sys.modules['execnb'] = None; from mia_pruning.cli import main; "
            "sys.exit(main(['notebooks', 'no_such_notebook']))")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and 'pip install -e ".[dev]"' in r.stderr and 'Traceback' not in r.stderr

def test_bad_yaml_exits_2(tmp_path, capsys):
    (tmp_path / 'g.yaml').write_text('name: g\naxes:\n  sparsity: [0.5, 2.0]\nfixed: {dataset: digits, arch: mlp}\n')
    code, out, err = run(['grid', str(tmp_path / 'g.yaml')], capsys)
    assert code == 2 and '1 invalid cell(s)' in err and 'sparsity' in err


def test_dry_run_lists_cells(capsys):
    code, out, err = run(['grid', '--preset', 'quick', '--dry-run'], capsys)
    lines = out.strip().splitlines()
    assert code == 0 and lines[16].startswith('16 valid cell(s)')
    assert lines[0].split()[1:] == ['prune_method=l1_unstructured', 'sparsity=0.5', 'defense=none']
    plan = '\n'.join(lines[17:])  # then what it will train and fit, and an estimate of its wall time here
    assert '80 distinct model(s) to train' in plan and 'attack fit(s)' in plan and 'estimated wall time:' in plan, plan


def test_held_folder_exits_2(tmp_path, capsys, stub):
    with GridLock(tmp_path / 'held'):
        code, out, err = run(['grid', '--preset', 'smoke', '--out', str(tmp_path / 'held')], capsys)
    assert code == 2 and f'process {os.getpid()}' in err and 'in use by another grid' in err


def test_grid_exit_codes_and_report(tmp_path, capsys, stub):
    spec = tmp_path / 'mine.yaml'
    spec.write_text('axes: {seed: [7, 13]}\nfixed: {dataset: digits, arch: mlp}\n')
    out = tmp_path / 'o'
    code, text, err = run(['grid', str(spec), '--out', str(out), '--workers', '1', '--no-progress'], capsys)
    assert code == 1 and '1 ran, 0 skipped, 1 failed' in text and 'asked to fail' in text
    assert (out / 'summary.csv').exists() and (out / 'figures' / 'attack_vs_sparsity_digits_mlp.png').exists()
    assert (out / 'tables' / 'attack_accuracy.md').exists()
    spec.write_text('axes: {seed: [7]}\nfixed: {dataset: digits, arch: mlp}\n')
    code, text, err = run(['grid', str(spec), '--out', str(out), '--workers', '1', '--no-progress', '--no-report'], capsys)
    assert code == 0 and '0 ran, 1 skipped, 0 failed' in text and 'report:' not in text


def test_grid_part_is_packed_and_a_clone_reports_from_the_pack(tmp_path, capsys, stub):
    "--part runs a part, --pack writes it to <out>/parts/<part>.zip once complete; `report` on a clone restores the run folders from it."
    spec = tmp_path / 'mine.yaml'
    spec.write_text('axes: {seed: [7, 8]}\nfixed: {dataset: digits, arch: mlp}\n')
    out = tmp_path / 'o'
    code, text, err = run(['grid', str(spec), '--out', str(out), '--workers', '1', '--no-progress', '--no-report', '--part', 'seed=7', '--pack'], capsys)
    assert code == 0, err
    assert '1 ran, 0 skipped, 0 failed' in text and f'packed 1 run folder(s) into {out / "parts" / "seed-7.zip"}' in text
    clone = tmp_path / 'clone'
    (clone / 'parts').mkdir(parents=True)
    shutil.copy(out / 'parts' / 'seed-7.zip', clone / 'parts')  # a grid committed part by part: its parts and nothing else yet
    code, text, err = run(['report', str(clone)], capsys)
    assert code == 0 and 'restored 1 run folder(s)' in text and 'summary.csv: ' in text and 'from 1 complete run(s)' in text, err
    pd.testing.assert_frame_equal(pd.read_csv(clone / 'summary.csv'), pd.read_csv(out / 'summary.csv'))
    spec.write_text('axes: {seed: [7, 13]}\nfixed: {dataset: digits, arch: mlp}\n')  # the stub fails seed 13: no pack of an unfinished part
    code, text, err = run(['grid', str(spec), '--out', str(tmp_path / 'o2'), '--workers', '1', '--no-progress', '--no-report', '--pack'], capsys)
    assert code == 1 and 'not packed: 1 cell(s) of the part failed' in err and not (tmp_path / 'o2' / 'parts').exists()


def test_run_one_cell(tmp_path, capsys, stub, monkeypatch):
    monkeypatch.setenv('MIA_PRUNING_OUTPUTS', str(tmp_path / 'outputs'))
    code, text, err = run(['run', 'dataset=digits', 'arch=cnn', 'sparsity=0.8', 'prune_method=slimming', '--no-progress'], capsys)
    assert code == 0, err
    runs = list((tmp_path / 'outputs' / 'single' / 'runs').iterdir())
    assert len(runs) == 1 and f'run folder: {runs[0]}' in text
    params = json.loads((runs[0] / 'params.json').read_text())['params']
    assert (params['arch'], params['sparsity'], params['prune_method']) == ('cnn', 0.8, 'slimming')
    code, text, err = run(['run', 'seed=13', '--no-progress'], capsys)
    assert code == 1 and 'FAILED' in text


def test_report_command(tmp_path, capsys):
    out = tmp_path / 'g'
    for i, s in enumerate([0.5, 0.9]):
        rd = out / 'runs' / f'cell{i}'
        rd.mkdir(parents=True)
        (rd / 'params.json').write_text(json.dumps({'params': {'dataset': 'digits', 'arch': 'mlp', 'prune_method': 'l1_unstructured',
                                                               'sparsity': s, 'defense': 'none', 'seed': 7}}))
        (rd / 'rows.json').write_text(json.dumps([{'model_state': st, 'attack': a, 'attack_acc': 0.5 + s / 10, 'test_acc': 0.9,
                                                   'auc': 0.6, 'tpr_at_0_1pct_fpr': 0.01} for st in ('dense', 'pruned') for a in ('conf', 'loss')]))
        (rd / 'metrics.json').write_text('{}')
        save_json(rd / 'params.json', {**json.loads((rd / 'params.json').read_text()), 'provenance': {'cell_id': rd.name}})
        np.savez(rd / 'scores.npz', dense__py=np.ones(2))
        finish_run(rd, notebook=False)
    code, text, err = run(['report', str(out)], capsys)
    assert code == 0 and 'summary.csv: 8 rows from 2 complete run(s)' in text
    assert 'skipped divergence' in text  # these synthetic runs hold no scores.npz: said, not hidden
    assert len(pd.read_csv(out / 'summary.csv')) == 8 and (out / 'figures' / 'attacks_digits_mlp.png').exists()
    code, text, err = run(['report', str(out), '--cell', 'nope'], capsys)
    assert code == 2 and "cell 'nope' is not in" in err


def test_bench_is_delegated(monkeypatch, capsys):
    seen = {}
    fake = types.ModuleType('mia_pruning.bench')
    fake.main = lambda argv: seen.setdefault('argv', argv) and 3
    monkeypatch.setitem(sys.modules, 'mia_pruning.bench', fake)
    assert cli.main(['bench', '--suite', 'gpu', '--smoke']) == 3 and seen['argv'] == ['--suite', 'gpu', '--smoke']
    monkeypatch.setitem(sys.modules, 'mia_pruning.bench', types.ModuleType('mia_pruning.bench'))  # no main()
    code, out, err = run(['bench'], capsys)
    assert code == 2 and 'mia_pruning.bench.main' in err


def test_console_script():
    exe = shutil.which('mia-pruning') or str(Path(sys.executable).with_name('mia-pruning'))
    if not Path(exe).exists(): pytest.skip('the console script is not installed (pip install -e .)')
    r = subprocess.run([exe, '--help'], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and all(c in r.stdout for c in ('grid', 'run', 'report', 'bench'))


def test_real_template_failure_is_reported(tmp_path, capsys):
    # the real experiment notebook, a cell whose data is absent: it fails fast, exit 1, traceback kept
    code, text, err = run(['run', 'dataset=cifar10', 'arch=resnet20', f'data_root={tmp_path / "empty"}',
                           '--out', str(tmp_path / 'o'), '--no-progress'], capsys)
    assert code == 1 and 'FAILED' in text and 'cifar10' in text.lower()
    # the model task that needs the data fails first; its traceback is kept, and the cell never looks complete
    tracebacks = list((tmp_path / 'o' / 'model_errors').iterdir())  # one per model task that failed (victim, shadows)
    assert tracebacks and 'FileNotFoundError' in text and all('FileNotFoundError' in t.read_text() for t in tracebacks)
    assert not any((tmp_path / 'o' / 'runs').glob('*/metrics.json'))
