"""Smoke runs of every benchmark: each prints its figures (ratio first, with its target) and writes its JSON record.

No assertion here depends on a timing: smoke sizes only check that the benchmarks run and report what they measured.
"""
import json
import numpy as np

import pytest

from mia_pruning import bench
from mia_pruning.core import load_json

RECORD_KEYS = {'name', 'smoke', 'figures', 'raw', 'notes', 'env', 'torch_threads', 'load_avg_start', 'load_avg_end',
               'started', 'seconds', 'command'}
FIGURE_KEYS = {'name', 'value', 'unit', 'target', 'op', 'met', 'line', 'smoke'}


def check_record(path, name, figure_names, printed):
    "The record at `path` is complete, and each of its figures was printed as its line."
    rec = load_json(path)
    assert RECORD_KEYS <= set(rec), RECORD_KEYS - set(rec)
    assert rec['name'] == name and rec['smoke'] is True
    assert {'python', 'torch', 'device', 'platform'} <= set(rec['env'])
    assert [f['name'] for f in rec['figures']] == figure_names
    for f in rec['figures']:
        assert FIGURE_KEYS <= set(f), FIGURE_KEYS - set(f)
        assert isinstance(f['value'], float) and f['value'] > 0
        assert f['line'].startswith(f"{f['name']}: ")       # the ratio comes right after the name
        assert f['line'] in printed                           # ... and the line was printed
        if f['target'] is not None: assert f"(target {f['op']} " in f['line']
        assert 'no verdict' in f['line']                     # smoke figures claim nothing
    return rec


def test_train_loop_threshold_sensitivity(tmp_path, capsys):
    recs = {'train_loop': bench.bench_train_loop(smoke=True, out=tmp_path),
            'threshold': bench.bench_threshold(smoke=True, out=tmp_path),
            'sensitivity': bench.bench_sensitivity(smoke=True, out=tmp_path)}
    out = capsys.readouterr().out
    tl = check_record(tmp_path / 'train_loop.json', 'train_loop', ['train-loop mlp/digits', 'train-loop cnn/28x28'], out)
    for case in ('mlp/digits', 'cnn/28x28'):
        raw = tl['raw'][case]
        assert len(raw['ours_seconds']) == len(raw['bare_seconds']) >= 2
        assert {'ours_median_s', 'bare_median_s', 'ours_samples_per_s', 'bare_samples_per_s'} <= set(raw)
    th = check_record(tmp_path / 'threshold.json', 'threshold', ['threshold n=500/side', 'threshold n=2,000/side'], out)
    for n in ('500', '2000'):
        raw = th['raw'][n]
        assert raw['equal_accuracy'] and raw['ours_acc'] == pytest.approx(raw['reference_acc'], abs=1e-12)  # same best accuracy
        assert 0.5 <= raw['ours_acc'] <= 1
        assert f"{raw['ours_acc']:.4f} vs {raw['reference_acc']:.4f} (equal)" in out
    se = check_record(tmp_path / 'sensitivity.json', 'sensitivity', ['sensitivity mlp/digits', 'features with sensitivity mlp/digits',
                                                                       'sensitivity cnn/28x28', 'features with sensitivity cnn/28x28'], out)
    assert all(f['target'] == pytest.approx(13.2) and f['op'] == '<=' for f in se['figures'] if f['name'].startswith('sensitivity'))
    speed = [f for f in se['figures'] if f['name'].startswith('features')]
    assert all(f['target'] == 2.0 and f['op'] == '>=' for f in speed)
    raw = se['raw']['cnn/28x28']
    assert raw['m'] == 10 and len(raw['features_fast_seconds']) == len(raw['features_plain_seconds']) >= 2
    assert speed[1]['value'] == pytest.approx(np.median(raw['features_plain_seconds']) / np.median(raw['features_fast_seconds']))
    for name, rec in recs.items():  # the returned record is the one written
        assert json.loads(json.dumps(rec, default=str))['figures'] == load_json(tmp_path / f'{name}.json')['figures']


def quick_template(path):
    "An experiment notebook that writes a complete run folder at once (no torch), so the grid's mechanics cost seconds."
    import nbformat
    from mia_pruning.pipeline import CELL_DEFAULTS
    nb = nbformat.v4.new_notebook(metadata={'kernelspec': {'name': 'python3', 'display_name': 'python3', 'language': 'python'}})
    params = nbformat.v4.new_code_cell('\n'.join(f'{k} = {v!r}' for k, v in {**CELL_DEFAULTS, 'out_dir': ''}.items()))
    params.metadata['tags'] = ['parameters']
    body = nbformat.v4.new_code_cell(
        'import json, pathlib\n'
        f'p = {{k: globals()[k] for k in {list(CELL_DEFAULTS)!r}}}\n'
        'd = pathlib.Path(out_dir)\n'
        "(d / 'params.json').write_text(json.dumps({'params': p, 'provenance': {'cell_id': d.name}}))\n"
        "import numpy as np; np.savez(d / 'scores.npz', dense__is_member=np.array([True, False]))\n"
        "(d / 'rows.json').write_text(json.dumps([dict(p, model_state='dense', attack='conf', attack_acc=0.5)]))\n"
        "(d / 'metrics.json').write_text(json.dumps({'dense/conf/attack_acc': 0.5}))")
    nb.cells = [params, body]
    nbformat.write(nb, str(path))
    return path


@pytest.mark.slow  # about 30 s on 2 free cores (worker and kernel start-ups), minutes when the cores are busy
def test_grid_scaling(tmp_path, capsys):
    "The benchmark's five grid runs, with a stand-in template (the real cells are exercised by the grid's own tests)."
    tmpl = quick_template(tmp_path / 'quick.ipynb')
    rec = bench.bench_grid_scaling(smoke=True, out=tmp_path, workdir=tmp_path, template=tmpl)
    out = capsys.readouterr().out
    check_record(tmp_path / 'grid_scaling.json', 'grid_scaling',
                 ['grid-scaling 2 local workers', 'grid-scaling dask 2 workers', 'grid-scaling cached rerun',
                  'grid-scaling resumed rerun'], out)
    runs = rec['raw']['runs']
    assert list(runs) == ['local-1', 'local-2', 'dask-2', 'cached-rerun', 'resume']
    assert [runs[k]['ran'] for k in runs] == [2, 2, 2, 2, 0]          # the rerun re-executes, the resume skips
    assert runs['resume']['skipped'] == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith('mia-bench-grid-')] == []  # temp grids removed


def test_memory_and_gpu(tmp_path, capsys):
    mem = bench.bench_memory(smoke=True, out=tmp_path)
    gpu = bench.bench_gpu(smoke=True, out=tmp_path, device='cpu')
    out = capsys.readouterr().out
    check_record(tmp_path / 'memory.json', 'memory', ['memory tiny digits/mlp cell'], out)
    raw = mem['raw']
    assert raw['cell_complete']
    assert raw['cell']['peak_rss_bytes'] > raw['import_only']['peak_rss_bytes'] > 50 * 2**20  # torch alone is > 50 MB
    check_record(tmp_path / 'gpu.json', 'gpu', ['gpu train resnet20', 'gpu sensitivity resnet20', 'gpu suite total'], out)
    assert set(gpu['raw']['stages']) == {'data', 'warmup', 'train', 'train_bare_loop', 'prune', 'fine_tune', 'inference',
                                         'posteriors', 'sensitivity', 'samia'}
    assert '# gpu stage samia:' in out


def test_gpu_suite_without_a_gpu_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench.torch.cuda, 'is_available', lambda: False)
    assert bench.bench_gpu(smoke=False, out=tmp_path, device='cpu') is None
    assert 'no CUDA GPU' in capsys.readouterr().out
    assert not (tmp_path / 'gpu.json').exists()


def test_main(tmp_path, capsys):
    assert bench.main(['--only', 'threshold', '--smoke', '--out', str(tmp_path)]) == 0
    out = capsys.readouterr().out
    check_record(tmp_path / 'threshold.json', 'threshold', ['threshold n=500/side', 'threshold n=2,000/side'], out)
    assert bench.select_benchmarks('cpu') == ['train_loop', 'threshold', 'sensitivity', 'attack_training', 'fused', 'cell_cost',
                                              'malloc_trim', 'scheduling', 'grid_scaling', 'memory']
    assert bench.select_benchmarks('gpu') == ['gpu', 'fused_gpu']
    for name, (_, fn) in bench.BENCHMARKS.items(): assert callable(fn) and fn.__name__.startswith('bench_'), name
    with pytest.raises(SystemExit) as e: bench.main(['--only', 'nope', '--out', str(tmp_path)])
    assert e.value.code == 2
    assert "unknown benchmark(s) ['nope']" in capsys.readouterr().err
    with pytest.raises(SystemExit): bench.main(['--suite', 'tpu'])


def test_cell_cost(tmp_path, capsys):
    "The fixed-cost benchmark runs a real cell through the experiment notebook, forked and fresh, and subtracts run_cell's own time."
    rec = bench.bench_cell_cost(smoke=True, out=tmp_path, repeats=1)
    out = capsys.readouterr().out
    rec = check_record(tmp_path / 'cell_cost.json', 'cell_cost', ['cell fixed cost', 'cell wall, forked vs fresh kernel'], out)
    for mode in ('fresh', 'forked'):
        (cell,) = rec['raw']['cells'][mode]
        assert cell['wall_s'] > cell['run_cell_s'] > 0 and cell['fixed_s'] == pytest.approx(cell['wall_s'] - cell['run_cell_s'])
    assert rec['figures'][0]['target'] == 3.0 and rec['figures'][0]['op'] == '<='
    assert rec['figures'][0]['value'] == pytest.approx(rec['raw']['cells']['forked'][0]['fixed_s'])  # the default's figure
    walls = [rec['raw']['cells'][m][0]['wall_s'] for m in ('fresh', 'forked')]
    assert rec['figures'][1]['value'] == pytest.approx(walls[0] / walls[1])
    assert rec['raw']['import_pipeline_s'] > 0
