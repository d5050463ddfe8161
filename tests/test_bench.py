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
        "import numpy as np\nfrom mia_pruning.pipeline import cell_attacks\nfrom mia_pruning.runs import save_scores, score_key\n"
        "save_scores(d, {'dense__is_member': np.array([True, False]), **{score_key(st, 'score', a): np.ones(2) for st, ns in cell_attacks(p).items() for a in ns}})\n"
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


@pytest.mark.slow  # about a minute: the smoke preset through the CLI, the matmul peak before and after
def test_quick_wall_smoke(tmp_path, capsys):
    "The README command's wall beside the machine's peak measured in the same run (smoke preset: no verdict)."
    rec = bench.bench_quick_wall(smoke=True, out=tmp_path, workdir=tmp_path)
    out = capsys.readouterr().out
    check_record(tmp_path / 'quick_wall.json', 'quick_wall', ['quick grid wall from empty cache (README command)',
                                                               'quick grid wall scaled to the target host'], out)
    raw = rec['raw']
    assert raw['preset'] == 'smoke' and list(raw['runs']) == ['readme'] and raw['runs']['readme']['grid_seconds'] > 0
    assert all(v > 0 for p in ('peak_before', 'peak_after') for v in raw[p].values())
    f = {x['name']: x for x in rec['figures']}
    p1 = max(raw['peak_before']['1'], raw['peak_after']['1'])
    assert abs(f['quick grid wall scaled to the target host']['value'] - raw['runs']['readme']['seconds'] * p1 / bench.REFERENCE_PEAK_GFLOPS) < 1e-9
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith('mia-bench-quick-')] == []  # temp grids removed


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
                                              'malloc_trim', 'scheduling', 'grid_scaling', 'quick_wall', 'memory']
    assert bench.select_benchmarks('gpu') == ['gpu', 'fused_gpu']
    assert bench.select_benchmarks('peak') == ['peak'] and bench.select_benchmarks('gpu', check=True) == ['gpu_check']
    assert bench.select_benchmarks('all')[-2:] == ['peak', 'gpu_check']
    for name, (_, fn) in bench.BENCHMARKS.items(): assert callable(fn) and fn.__name__.startswith('bench_'), name
    with pytest.raises(SystemExit) as e: bench.main(['--only', 'nope', '--out', str(tmp_path)])
    assert e.value.code == 2
    assert "unknown benchmark(s) ['nope']" in capsys.readouterr().err
    with pytest.raises(SystemExit): bench.main(['--suite', 'tpu'])
    with pytest.raises(SystemExit) as e: bench.main(['--suite', 'cpu', '--check'])
    assert e.value.code == 2 and '--check goes with --suite gpu' in capsys.readouterr().err


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


def test_peak_suite(tmp_path, capsys):
    "Each stage's fraction of the fp32 matmul peak measured in the same run, through the command (`--suite peak`)."
    assert bench.main(['--suite', 'peak', '--smoke', '--threads', '1', '--out', str(tmp_path)]) == 0
    out = capsys.readouterr().out
    stages = [f'{s} {a}' for a in ('cnn/28x28', 'resnet20/32x32') for s in
              ('dense training', 'dense training channels_last', 'fine-tuning 70% pruned', 'posterior features', 'sensitivity features')]
    cores = __import__('os').cpu_count()
    peaks = ['fp32 matmul peak, 1 thread'] + ([f'fp32 matmul peak, {cores} threads'] if cores > 1 else [])
    rec = check_record(tmp_path / 'peak.json', 'peak', peaks + stages + ['SAMIA training (10 classes)', 'NN-attack training (10 classes)'], out)
    peak = rec['raw']['peak']['1']['gflops']                 # the peak this run measured at the stages' thread count
    assert peak == max(r['gflops'] for r in rec['raw']['peak']['1']['runs']) > 0
    for f in rec['figures']:
        if f.get('absolute'): assert f['unit'] == 'GFLOP/s'; continue
        assert 0 < f['value'] <= 1.5, f['line']
        assert f['unit'] == 'the 1-thread fp32 matmul peak' and f['data']['peak_gflops'] == peak and f['data']['peak_threads'] == 1
        assert f['value'] == pytest.approx(f['data']['gflops'] / peak)
        assert f['value'] == pytest.approx(f['data']['flops'] / f['data']['best_s'] / 1e9 / peak)  # counted FLOPs / best seconds
        assert f"of {peak:.1f} measured in this run" in f['line']
    ft = rec['raw']['stages']['cnn/28x28']['fine-tuning 70% pruned']
    dense = rec['raw']['stages']['cnn/28x28']['dense training']
    assert ft['flops'] == dense['flops']                     # masked weights, dense kernels: the zeros are multiplied too
    assert ft['useful_fraction'] == pytest.approx(0.3, abs=0.02)


def test_compare_metrics_known_answers():
    a = {'dense/test_acc': 0.90, 'pruned/nn/auc': 0.60, 'pruned/gap/auc': 0.60, 'pruned/gap/tpr_at_1pct_fpr': float('nan'), 'x/y': 'a'}
    b = {'dense/test_acc': 0.915, 'pruned/nn/auc': 0.64, 'pruned/gap/auc': 0.63, 'pruned/gap/tpr_at_1pct_fpr': 0.5, 'x/y': 'a'}
    c = bench.compare_metrics(a, b, bench.GPU_CHECK_TOL)
    assert c['failed'] == ['pruned/gap/auc']                 # learned AUC within 0.05 passes, a threshold AUC off by 0.03 does not
    assert c['judged'] == 3 and not c['identical']
    assert c['max_diff']['reported'] == float('inf')        # NaN against a number is reported, not judged
    assert bench.compare_metrics(a, dict(a))['identical'] and bench.compare_metrics(a, dict(a))['failed'] == []
    assert bench.compare_metrics(a, {**a, 'dense/test_acc': 0.9000001})['failed'] == ['dense/test_acc']  # no tolerance: identical only
    assert bench.compare_metrics(a, {k: v for k, v in a.items() if k != 'x/y'})['failed'] == ['x/y']     # a missing metric fails


def test_gpu_check_without_a_gpu(tmp_path, capsys):
    "`--suite gpu --check` on a CPU-only machine: the tiny cell twice on the CPU, every metric identical, the GPU part not run, exit 0."
    assert bench.main(['--suite', 'gpu', '--check', '--out', str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert 'the GPU part was NOT RUN: no CUDA GPU on this machine' in out and 'gpu check: PASSED' in out
    rec = load_json(tmp_path / 'gpu_check.json')
    assert RECORD_KEYS <= set(rec) and rec['name'] == 'gpu_check'
    assert [f['name'] for f in rec['figures']] == ['gpu check metrics, cpu vs cpu', 'gpu check features, cpu vs cpu']
    assert all(f['line'] in out and f['line'].endswith('[met]') for f in rec['figures'])  # a check's verdict holds at any size
    raw = rec['raw']
    assert raw['gpu'].startswith('not run') and raw['passed'] is True and raw['tolerances'] == 'identical'
    rows = raw['compare']['rows']
    assert len(rows) > 300 and raw['compare']['judged'] == len(rows)  # every metric of every attack, each judged
    for r in rows:                                                    # the two CPU cells agree on every metric
        assert r['ref'] == r['other'] or (r['ref'] != r['ref'] and r['other'] != r['other']), r
    assert {r['key'] for r in rows} >= {'dense/test_acc', 'pruned/test_acc', 'dense/samia/auc', 'pruned/lira_online/auc', 'pruned/nn/auc'}
    assert raw['features']['logits_dtype'] == ['torch.float32'] * 2 and raw['features']['max_posterior_diff'] == 0.0
    assert [f['met'] for f in rec['figures']] == [True, True]


@pytest.mark.slow  # about 20 s on 2 busy cores (bench_gpu's stages at smoke sizes)
def test_gpu_check_gpu_part_runs_on_cpu(tmp_path, capsys):
    "The GPU part's code (peaks, stage FLOPs and fractions) at smoke sizes on the CPU, so that a GPU session does not find its typos."
    rec = bench.bench_gpu_check(smoke=True, out=tmp_path, device='cpu', params={'attacks': 'conf', 'num_references': 0}, gpu_part=True,
                                fused_models=0)  # fused_gpu's ResNet18s take a minute on this CPU: left out here
    names = [f['name'] for f in rec['figures']]
    assert names[:5] == ['gpu check metrics, cpu vs cpu', 'gpu check features, cpu vs cpu', 'gpu matmul peak fp32', 'gpu matmul peak tf32',
                         'gpu matmul peak fp16']
    assert {'gpu train resnet20', 'gpu sensitivity resnet20', 'gpu samia resnet20'} <= set(names) and rec['raw']['passed']
    stages = rec['raw']['gpu']['gpu_suite']['raw']['stages']
    for name in ('train', 'fine_tune', 'posteriors', 'sensitivity', 'samia'):
        st = stages[name]
        assert st['flops'] > 0 and st['peak_precision'] == 'fp32'
        assert st['fraction_of_peak'] == pytest.approx(st['flops'] / st['seconds'] / 1e9 / rec['raw']['gpu']['peaks']['fp32']['gflops'])
    assert stages['sensitivity']['flops'] == pytest.approx(11 * stages['inference']['flops'])  # m + 1 forward passes per sample


def test_bench_attack_training_record(tmp_path):
    rec = bench.bench_attack_training(smoke=True, out=tmp_path, threads=1, rows=256, repeats=1)
    assert rec['name'] == 'attack_training' and rec['smoke'] and (tmp_path / 'attack_training.json').exists()
    assert [f['name'].split()[0] for f in rec['figures']] == ['samia', 'nn']
    for f in rec['figures']:
        assert f['target'] == 2.0 and f['op'] == '>=' and f['value'] > 0
        assert f['data']['delta_auc'] <= 0.005 and f['data']['max_weight_diff'] <= 1e-6
        assert '[smoke sizes: no verdict]' in f['line']
    assert rec['raw']['samia']['steps_per_epoch'] == 2 and len(rec['raw']['nn']['ours_seconds']) == 1


def test_attack_step_profile_groups_the_time():
    from mia_pruning.attacks import SAMIA, AttackMLP, samia_features, synthetic_attack_data
    d = synthetic_attack_data(256, seed=82)
    prof = bench.attack_step_profile(SAMIA(10), samia_features(d), d.is_member, steps=2)
    assert prof.share.sum() == pytest.approx(1.0) and (prof.ms_per_step > 0).all()
    assert {'dropout masks', 'matrix products', 'softmax'} <= set(prof.group)
    with pytest.raises(ValueError, match='at least batch_size=128 rows'):
        bench.attack_step_profile(AttackMLP(3), np.zeros((10, 3)), np.arange(10) % 2)


def test_bench_fused_gpu_says_not_run_without_cuda(tmp_path):
    "Without CUDA the GPU-suite figure is a record with a 'not run' note and no figures (no fake number)."
    rec = bench.bench_fused_gpu(out=tmp_path, device='cpu')
    assert rec['figures'] == [] and rec['notes'].startswith('not run')
    assert (tmp_path / 'fused_gpu.json').exists()


def test_benchmarks_live_in_the_bench_modules():
    "Tooling stays out of the science: no module but bench and benchkit defines a `bench_` function."
    import ast
    from pathlib import Path
    pkg = Path(bench.__file__).parent
    found = {f.name: [n.name for n in ast.parse(f.read_text(encoding='utf-8')).body
                      if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name.startswith('bench_')]
             for f in sorted(pkg.glob('*.py'))}
    assert {f for f, names in found.items() if names} <= {'bench.py', 'benchkit.py'}, found
    assert 'bench_fused' in found['bench.py'] and 'bench_scheduling' in found['bench.py']  # the check reads real definitions
