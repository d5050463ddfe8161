"""Reliability suite: a catalogue of bad inputs that must fail clearly and write nothing, faults that must lose nothing
(SIGKILL mid-training, truncated cache files, a failing grid cell, an error while writing a run folder), determinism
of a cell run through the experiment notebook, and security (safe deserialisation only, parameters passed to papermill
as data, no path outside the output folder from a grid spec).

Related cases already covered elsewhere (not repeated here): test_pipeline.test_bad_cells_fail_before_any_work and
test_grid.test_bad_specs_fail_before_anything_runs (more bad cells and specs, output folder absent afterwards),
test_cli.test_bad_input_exits_2_before_anything_runs (the same through the command line), test_foundation's
test_cache_detects_damage_and_rebuilds (ArtifactCache alone), test_grid.test_sigkill_mid_grid_then_rerun... (SIGKILL of a
whole grid with a stand-in template), test_pipeline.test_same_cell_twice_gives_byte_identical_metrics (in-process).
"""
from __future__ import annotations

import ast, hashlib, json, os, pickle, shutil, signal, subprocess, sys, textwrap, time, warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch

import mia_pruning
from mia_pruning import grid as G
from mia_pruning import runs as RUNS
from mia_pruning import pipeline as P
from mia_pruning.core import ArtifactCache, load_checkpoint, save_checkpoint, save_json, load_json
from mia_pruning.data import load_dataset, make_splits, get_splits, write_idx, _FASHION_FILES
from mia_pruning.models import build_model
from mia_pruning.prune import prune_model
from mia_pruning.pruned import pruned_model, load_pruned
from mia_pruning.features import AttackData
from mia_pruning.attacks import run_attacks, synthetic_attack_data
from mia_pruning.metrics import membership_metrics
from mia_pruning.defenses import make_defense
from mia_pruning.report import make_report
from mia_pruning.fused import dense_models

# the tiny cell every test here runs (digits, mlp, a few epochs, threshold attacks only)
# (one torch thread everywhere, so that runs in different processes compare exactly on any machine)
TINY = dict(dataset='digits', arch='mlp', epochs=2, num_shadows=2, attacks='gap,conf,loss', num_references=0, n_boot=0,
            attack_epochs=1, sparsity=0.5, threads=1)
KINDS = ('splits', 'dense_model', 'pruned_model', 'state_features', 'state_attack')  # TINY's attacks read no sensitivity


# ================================================================ helpers
def _sha(p: Path) -> str: return hashlib.sha256(p.read_bytes()).hexdigest()


def snapshot(root: Path) -> dict:
    "Every path under `root` with its kind, size, mtime and content hash (files)."
    out = {}
    if not root.exists(): return out
    for p in sorted(root.rglob('*')):
        rel = str(p.relative_to(root))
        if p.is_symlink(): out[rel] = ('link', os.readlink(p))
        elif p.is_dir(): out[rel] = ('dir',)
        else:
            st = p.stat(); out[rel] = ('file', st.st_size, st.st_mtime_ns, _sha(p))
    return out


def diff(before: dict, after: dict) -> list[str]:
    "Human-readable differences between two snapshots."
    return ([f'created {k}' for k in sorted(set(after) - set(before))] + [f'removed {k}' for k in sorted(set(before) - set(after))]
            + [f'modified {k}' for k in sorted(set(before) & set(after)) if before[k] != after[k]])


def entries(cache_root: Path) -> dict:
    "kind -> sorted names of the complete entries of a cache (temp folders of unfinished builds excluded)."
    return {k: sorted(p.name for p in (cache_root / k).iterdir() if not p.name.startswith('.')) if (cache_root / k).is_dir() else []
            for k in KINDS}


def canon(d) -> str:
    "A dict as canonical JSON (NaN-safe equality of metrics dicts)."
    return json.dumps(d, sort_keys=True, default=str)


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    "run_cell(threads=1) sets torch's thread count for the whole process: put it back for the other test files."
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    "An uninterrupted run of the tiny cell in its own fresh cache (read-only for the tests: copy before damaging)."
    cache = tmp_path_factory.mktemp('reference') / 'cache'
    n = torch.get_num_threads()
    try: res = P.run_cell(progress=False, cache_dir=str(cache), **TINY)
    finally: torch.set_num_threads(n)
    return res, cache


def copy_cache(reference, dest: Path) -> Path:
    shutil.copytree(reference[1], dest)
    return dest


# ================================================================ 1. catalogue of bad inputs
@dataclass
class Bad:
    "One bad input: `call(tmp)` must raise `exc` with every fragment of `match` in its message, writing nothing."
    id: str
    call: Callable[[Path], Any]
    exc: Any
    match: list
    setup: Callable[[Path], Any] | None = None


def _mlp(): return build_model('mlp', 10, (1, 8, 8), seed=0)


def _digits_split():
    ds = load_dataset('digits')
    return ds, make_splits(len(ds), num_shadows=1).victim


def _attack_data(**over):
    p = np.full((6, 3), 1 / 3); y = np.array([0, 1, 2, 0, 1, 2]); m = np.array([1, 1, 1, 0, 0, 0], bool)
    kw = dict(probs=p, labels=y, is_member=m, sensitivity=np.ones((6, 3)))
    kw.update(over)
    return AttackData(**kw)


def _nan_at(a, i=(1, 1)):
    a = np.array(a, dtype=float); a[i] = np.nan; return a


def _existing_grid(tmp: Path):
    "A complete earlier grid 'g' in the default output folder: a bad spec for the same name must leave it as it is."
    out = tmp / 'outputs' / 'g'
    rd = out / 'runs' / 'digits-mlp-cell'
    rd.mkdir(parents=True)
    save_json(rd / 'params.json', {'params': {'dataset': 'digits', 'arch': 'mlp'}, 'provenance': {}})
    save_json(rd / 'rows.json', [{'model_state': 'dense', 'attack': 'conf', 'attack_acc': 0.6}])
    save_json(rd / 'metrics.json', {'dense/conf/attack_acc': 0.6})
    save_json(out / 'grid.json', {'cells': {'digits-mlp-cell': 'complete'}})
    (out / 'summary.csv').write_text('dataset,arch,attack,attack_acc\ndigits,mlp,conf,0.6\n')


GBASE = {'dataset': 'digits', 'arch': 'mlp'}
ABSENT_CUDA = f'cuda:{torch.cuda.device_count()}' if torch.cuda.is_available() else 'cuda'  # a device this machine lacks
# each level doubles the one before: 9 levels of 10 aliases would expand to 10**9 strings
ALIAS_BOMB = 'name: g\nfixed:\n  a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + ''.join(
    f'  {chr(98 + i)}: &{chr(98 + i)} [{", ".join(["*" + chr(97 + i)] * 10)}]\n' for i in range(8))


def _yaml(tmp: Path, text: str): (tmp / 'g.yaml').write_text(text)


def _summary_csv(tmp: Path, bad_value: str | None = None, raw: bytes | None = None):
    "outputs/g/summary.csv with a text value in a numeric column, or with the bytes `raw`."
    d = tmp / 'outputs' / 'g'; d.mkdir(parents=True)
    if raw is not None: (d / 'summary.csv').write_bytes(raw); return
    cols = 'dataset,arch,prune_method,sparsity,defense,model_state,attack,attack_acc,test_acc,cell_id'
    (d / 'summary.csv').write_text(cols + '\n' + f'digits,mlp,l1_unstructured,0.5,none,dense,conf,0.6,0.9,c1\n'
                                   f'digits,mlp,l1_unstructured,0.5,none,pruned,conf,{bad_value},0.9,c1\n')



def _grid(spec, **kw):
    return lambda tmp: G.run_grid(spec, progress=False, workers=1, **kw)


def _fashion(tmp: Path, damage=None, gz=False):
    "The four Fashion-MNIST IDX files (5 train, 3 test images) under data/fashion_mnist, one of them damaged."
    d = tmp / 'data' / 'fashion_mnist'; d.mkdir(parents=True)
    rng = np.random.RandomState(0)
    for n in _FASHION_FILES:
        k = 5 if n.startswith('train') else 3
        if damage == 'count' and n.startswith('train-labels'): k = 4
        write_idx(d / (n + ('.gz' if gz else '')), rng.randint(0, 256, (k, 28, 28)) if 'images' in n else rng.randint(0, 10, k))
    f = d / (_FASHION_FILES[0] + ('.gz' if gz else ''))
    b = f.read_bytes()
    if damage == 'body': f.write_bytes(b[:-100])
    elif damage == 'header': f.write_bytes(b[:6])
    elif damage == 'gz': f.write_bytes(b[:len(b) // 2])
    elif damage == 'magic': f.write_bytes(b'\x1f\x8b' + b[2:])


def _purchase_csv(tmp: Path, text: str):
    d = tmp / 'data'; d.mkdir(parents=True, exist_ok=True)
    (d / 'purchase100.csv').write_text(text)


def _ckpt(tmp: Path, content: bytes | None = None, obj=None):
    d = tmp / 'ckpt'; d.mkdir()
    save_checkpoint(d / 'victim_model.pt', obj if obj is not None else {'w': torch.arange(2000.0)})
    if content is not None: (d / 'victim_model.pt').write_bytes(content(d / 'victim_model.pt'))


class _Evil:
    "An object whose unpickling would run a shell command."
    def __init__(self, target): self.target = target
    def __reduce__(self): return (os.system, (f'touch {self.target}',))


def _evil_ckpt(tmp: Path):
    d = tmp / 'ckpt'; d.mkdir()
    torch.save({'w': torch.zeros(2), 'x': _Evil(tmp / 'PWNED')}, d / 'victim_model.pt')


CATALOGUE = [
    # ---- names (registries): ValueError naming the bad name and listing the known ones
    Bad('dataset_name_is_case_sensitive', lambda t: load_dataset('Digits'), ValueError, ["unknown dataset 'Digits'", 'known: digits']),
    Bad('arch_name_via_dense_models', lambda t: dense_models('digits', 'resnet50', cache=ArtifactCache()), ValueError,
        ["unknown arch 'resnet50'", 'mlp', 'column_fc']),
    Bad('prune_method_name', lambda t: prune_model(_mlp(), 'magnitude', 0.5), ValueError, ["unknown prune method 'magnitude'", 'l1_unstructured']),
    Bad('shadow_prune_method_name', lambda t: P.run_cell(progress=False, **TINY, shadow_prune_method='random'), ValueError,
        ["'random'", 'l1_unstructured', "'same'"]),
    Bad('defense_name', lambda t: make_defense('dropout'), ValueError, ["unknown defense 'dropout'", 'ppb', 'dpsgd']),
    Bad('defense_option_value', lambda t: make_defense('advreg', 1.0, k=0), ValueError, ['advreg option k must be an integer >= 1', '0']),
    Bad('defense_param_of_wrong_type', lambda t: make_defense('ppb', 'strong'), ValueError, ['ppb lambda', "'strong'"]),
    Bad('defense_without_parameter', lambda t: make_defense('none', 2.0), ValueError, ["defense 'none' takes no parameter", '2.0']),
    Bad('attack_name', lambda t: run_attacks('conf,foo', synthetic_attack_data(40), synthetic_attack_data(40, seed=1)), ValueError,
        ["unknown attack(s) ['foo']", 'conf', 'samia']),
    Bad('cache_kind_path_traversal', lambda t: ArtifactCache().get_or_build('../escape', {}, lambda d: (d / 'x').write_text('x')),
        ValueError, ["cache kind must be a simple name, got '../escape'"]),
    # ---- sparsities
    Bad('sparsity_one', lambda t: prune_model(_mlp(), 'l1_unstructured', 1.0), ValueError, ['sparsity must be a number in [0, 1)', '1.0']),
    Bad('sparsity_bool', lambda t: prune_model(_mlp(), 'global_unstructured', True), ValueError, ['sparsity must be a number', 'True']),
    Bad('sparsity_nan_cell', lambda t: P.run_cell(progress=False, **{**TINY, 'sparsity': float('nan')}), ValueError, ['sparsity', 'nan']),
    Bad('shadow_sparsity_above_one', lambda t: P.run_cell(progress=False, **TINY, shadow_sparsity=1.5), ValueError, ['sparsity', '1.5']),
    Bad('sparsity_negative_pruned_model', lambda t: pruned_model(_mlp(), *_digits_split(), 'mlp', 'l1_unstructured', -0.1, cache=ArtifactCache()),
        ValueError, ['sparsity must be a number in [0, 1)', '-0.1']),
    # ---- split fractions
    Bad('split_fraction_of_wrong_type', lambda t: make_splits(1797, dev_frac='0.2'), ValueError, ['dev_frac', "'0.2'"]),
    Bad('split_fraction_one_via_get_splits', lambda t: get_splits('digits', 1797, test_frac=1.0, cache=ArtifactCache()), ValueError,
        ['test_frac must be a number strictly between 0 and 1', '1.0']),
    Bad('split_pool_too_small_via_get_splits', lambda t: get_splits('digits', 5, cache=ArtifactCache()), ValueError, ['n must be an integer >= 8', '5']),
    # ---- grid specs (the earlier complete grid in outputs/g must stay as it is)
    Bad('grid_unknown_parameter', _grid({'name': 'g', 'fixed': {**GBASE, 'sparsty': 0.5}}), ValueError,
        ["unknown parameter 'sparsty'", "did you mean 'sparsity'"], setup=_existing_grid),
    Bad('grid_sparsity_out_of_range', _grid({'name': 'g', 'fixed': GBASE, 'axes': {'sparsity': [0.5, 1.2]}}), ValueError,
        ['sparsity', '1.2', '1 invalid cell(s); nothing was run'], setup=_existing_grid),
    Bad('grid_structured_pruning_on_column_fc',
        _grid({'name': 'g', 'fixed': {'dataset': 'purchase100', 'arch': 'column_fc', 'prune_method': 'l1_structured'}}), ValueError,
        ['l1_structured removes Conv2d filters', 'ColumnFC', 'nothing was run'], setup=_existing_grid),
    Bad('grid_unknown_attack', _grid({'name': 'g', 'fixed': GBASE, 'axes': {'attacks': ['gap', 'gap,lossy']}}), ValueError,
        ["unknown attack(s) ['lossy']"], setup=_existing_grid),
    Bad('grid_string_where_int_expected', _grid({'name': 'g', 'fixed': {**GBASE, 'epochs': '3'}}), ValueError,
        ["epochs='3'", 'must be of type int'], setup=_existing_grid),
    Bad('grid_name_path_traversal', _grid({'name': '../g', 'fixed': GBASE}), ValueError, ["grid name '../g' is not allowed"], setup=_existing_grid),
    Bad('grid_yaml_with_python_tag', lambda t: G.run_grid(t / 'evil.yaml', progress=False), ValueError, ['is not valid YAML', 'python/object'],
        setup=lambda t: (t / 'evil.yaml').write_text(f'name: g\nfixed: !!python/object/apply:os.system ["touch {t / "PWNED"}"]\n')),
    Bad('grid_workers_of_wrong_type', lambda t: G.run_grid({'name': 'g', 'fixed': GBASE}, workers='2', progress=False), ValueError,
        ['workers must be a positive integer', "got '2'"], setup=_existing_grid),
    # ---- cell parameters of the wrong type or range
    Bad('cell_float_seed', lambda t: P.run_cell(progress=False, **TINY, seed=7.0), ValueError, ['seed=7.0 must be of type int']),
    Bad('cell_string_bool', lambda t: P.run_cell(progress=False, **TINY, dense_shadows='False'), ValueError,
        ["dense_shadows='False' must be of type bool"]),
    Bad('cell_string_int', lambda t: P.run_cell(progress=False, **{**TINY, 'num_shadows': '2'}), ValueError, ["num_shadows='2' must be of type int"]),
    Bad('cell_negative_epochs', lambda t: P.run_cell(progress=False, **{**TINY, 'epochs': -1}), ValueError, ['parameter epochs must be in [0, ', 'got -1']),
    Bad('cell_empty_attack_list', lambda t: P.run_cell(progress=False, **{**TINY, 'attacks': ' , '}), ValueError, ['no attack named', 'conf']),
    Bad('cell_image_arch_on_tabular_data', lambda t: P.run_cell(progress=False, **{**TINY, 'dataset': 'purchase100', 'arch': 'cnn'}),
        ValueError, ["arch 'cnn' needs image inputs", '(600,)']),
    Bad('cell_unknown_key', lambda t: P.run_cell(progress=False, **TINY, lr=0.1), ValueError, ["unknown cell parameter(s) ['lr']", 'sparsity']),
    # ---- missing or malformed data files
    Bad('data_missing_for_a_cell', lambda t: P.run_cell(progress=False, **{**TINY, 'dataset': 'purchase100', 'data_root': str(t / 'nowhere')}),
        FileNotFoundError, ["dataset 'purchase100' was not found", 'Looked in', '{tmp}/nowhere']),
    Bad('idx_truncated_body', lambda t: load_dataset('fashion_mnist'), ValueError, ['train-images-idx3-ubyte', 'header says', '3820'],
        setup=lambda t: _fashion(t, 'body')),
    Bad('idx_bad_magic', lambda t: load_dataset('fashion_mnist'), ValueError, ['train-images-idx3-ubyte is not an IDX file'],
        setup=lambda t: _fashion(t, 'magic')),
    Bad('idx_images_and_labels_disagree', lambda t: load_dataset('fashion_mnist'), ValueError, ['8 inputs but 7 labels'],
        setup=lambda t: _fashion(t, 'count')),
    Bad('idx_truncated_header', lambda t: load_dataset('fashion_mnist'), ValueError, ['train-images-idx3-ubyte'],
        setup=lambda t: _fashion(t, 'header')),
    Bad('idx_truncated_gzip', lambda t: load_dataset('fashion_mnist'), ValueError, ['train-images-idx3-ubyte.gz'],
        setup=lambda t: _fashion(t, 'gz', gz=True)),
    Bad('csv_wrong_feature_count', lambda t: load_dataset('purchase100'), ValueError, ['purchase100.csv', 'must have 600 features', '(2, 10)'],
        setup=lambda t: _purchase_csv(t, '\n'.join(','.join(['0'] * 10 + [str(i + 1)]) for i in range(2)) + '\n')),
    Bad('csv_not_numeric', lambda t: load_dataset('purchase100'), ValueError, ['purchase100.csv', 'abc'],
        setup=lambda t: _purchase_csv(t, '1,2,abc\n3,4,5\n')),
    Bad('npz_without_x_and_y', lambda t: load_dataset('purchase100'), ValueError, ['purchase100.npz: expected arrays x and y', "['a', 'b']"],
        setup=lambda t: ((t / 'data').mkdir(), np.savez(t / 'data' / 'purchase100.npz', a=np.zeros((2, 600)), b=np.ones(2)))),
    Bad('npz_not_a_zip', lambda t: load_dataset('purchase100'), ValueError, ['purchase100.npz'],
        setup=lambda t: ((t / 'data').mkdir(), (t / 'data' / 'purchase100.npz').write_bytes(b'PK\x03\x04 garbage, not a zip'))),
    Bad('texas_features_and_labels_disagree', lambda t: load_dataset('texas100'), ValueError, ['has 3 rows but', 'has 2 labels'],
        setup=lambda t: ((t / 'data' / 'texas' / '100').mkdir(parents=True),
                         np.savetxt(t / 'data' / 'texas' / '100' / 'feats', np.zeros((3, 6169)), delimiter=',', fmt='%d'),
                         np.savetxt(t / 'data' / 'texas' / '100' / 'labels', [1, 2], fmt='%d'))),
    # ---- corrupt or hostile checkpoints
    Bad('checkpoint_truncated', lambda t: load_checkpoint(t / 'ckpt' / 'victim_model.pt'), (ValueError, RuntimeError), ['victim_model.pt'],
        setup=lambda t: _ckpt(t, lambda p: p.read_bytes()[:len(p.read_bytes()) // 2])),
    Bad('checkpoint_empty', lambda t: load_checkpoint(t / 'ckpt' / 'victim_model.pt'), (ValueError, RuntimeError), ['victim_model.pt'],
        setup=lambda t: _ckpt(t, lambda p: b'')),
    Bad('checkpoint_with_pickled_code', lambda t: load_checkpoint(t / 'ckpt' / 'victim_model.pt'), pickle.UnpicklingError, ['Weights only load failed'],
        setup=_evil_ckpt),
    Bad('pruned_checkpoint_without_state_dict', lambda t: load_pruned(t / 'ckpt' / 'victim_model.pt', 'mlp', 10, (1, 8, 8)), ValueError,
        ['victim_model.pt is not a pruned-model checkpoint'], setup=lambda t: _ckpt(t)),
    # ---- attack features and metrics
    Bad('attackdata_nan_probs', lambda t: _attack_data(probs=_nan_at(np.full((6, 3), 1 / 3))), ValueError, ['probs must be finite', '1 NaN']),
    Bad('attackdata_nan_sensitivity', lambda t: _attack_data(sensitivity=_nan_at(np.ones((6, 3)), (2, 0))), ValueError,
        ['sensitivity must be finite', '1 NaN', 'flat position 6']),
    Bad('attackdata_logits_for_probs', lambda t: _attack_data(probs=np.full((6, 3), 2.0)), ValueError, ['probs must lie in [0, 1]', 'not logits']),
    Bad('attackdata_label_out_of_range', lambda t: _attack_data(labels=np.array([0, 1, 2, 0, 1, 3])), ValueError, ['labels must lie in [0, 3)', 'max 3']),
    Bad('metrics_mismatched_lengths', lambda t: membership_metrics(np.arange(10.0), np.arange(9) % 2), ValueError,
        ['is_member has length 9 but scores has length 10']),
    Bad('metrics_nan_scores', lambda t: membership_metrics(_nan_at(np.arange(10.0), 4), np.arange(10) % 2), ValueError,
        ['scores must be finite', 'first at index 4']),
    Bad('metrics_only_members', lambda t: membership_metrics(np.arange(4.0), np.ones(4, bool)), ValueError,
        ['both members (True) and non-members (False)', '4 members']),
    Bad('metrics_mismatched_labels', lambda t: membership_metrics(np.arange(4.0), [1, 0, 1, 0], labels=[0, 1, 2]), ValueError,
        ['labels has shape (3,) but scores has shape (4,)']),
    # ---- report
    Bad('report_without_summary', lambda t: make_report(t / 'outputs' / 'g'), FileNotFoundError, ['no summary table', 'summary.csv'],
        setup=lambda t: (t / 'outputs' / 'g' / 'runs').mkdir(parents=True)),
    Bad('report_summary_lacking_columns', lambda t: make_report(t / 'outputs' / 'g'), ValueError, ['summary.csv', 'lacks column(s)', 'model_state'],
        setup=_existing_grid),
    Bad('report_text_in_a_numeric_column', lambda t: make_report(t / 'outputs' / 'g'), ValueError,
        ['summary.csv', 'column attack_acc must hold numbers', "'high'"], setup=lambda t: _summary_csv(t, 'high')),
    Bad('report_empty_summary', lambda t: make_report(t / 'outputs' / 'g'), ValueError, ['summary.csv', 'is empty'],
        setup=lambda t: _summary_csv(t, raw=b'')),
    Bad('report_garbage_summary', lambda t: make_report(t / 'outputs' / 'g'), ValueError, ['summary.csv', 'not a readable CSV'],
        setup=lambda t: _summary_csv(t, raw=b'\xff\xfe\x00garbage\x00\n\x81,\x82\n"')),
    Bad('report_summary_is_a_folder', lambda t: make_report(t / 'outputs' / 'g'), ValueError, ['summary.csv', 'is a folder'],
        setup=lambda t: (t / 'outputs' / 'g' / 'summary.csv').mkdir(parents=True)),
    Bad('collect_summary_is_a_folder', lambda t: G.collect(t / 'outputs' / 'g'), ValueError, ['summary.csv', 'is a folder or a link'],
        setup=lambda t: (_existing_grid(t), (t / 'outputs' / 'g' / 'summary.csv').unlink(), (t / 'outputs' / 'g' / 'summary.csv').mkdir())),
    # ---- YAML that could mislead or exhaust (the earlier grid 'g' must stay as it is)
    Bad('grid_yaml_duplicate_key', lambda t: G.run_grid(t / 'g.yaml', progress=False), ValueError,
        ['g.yaml', "the key 'sparsity' is given twice (first on line 4)"],
        setup=lambda t: (_existing_grid(t), _yaml(t, 'name: g\nfixed: {dataset: digits, arch: mlp}\naxes:\n  sparsity: [0.5]\n  sparsity: [0.9]\n'))),
    Bad('grid_yaml_two_axes', lambda t: G.run_grid(t / 'g.yaml', progress=False), ValueError, ['g.yaml', "the key 'axes' is given twice"],
        setup=lambda t: (_existing_grid(t), _yaml(t, 'name: g\naxes: {sparsity: [0.5]}\nfixed: {dataset: digits}\naxes: {seed: [1]}\n'))),
    Bad('grid_yaml_alias_bomb', lambda t: G.run_grid(t / 'g.yaml', progress=False), ValueError, ['g.yaml', 'the alias *a is not allowed'],
        setup=lambda t: (_existing_grid(t), _yaml(t, ALIAS_BOMB))),
    Bad('grid_yaml_not_utf8', lambda t: G.run_grid(t / 'g.yaml', progress=False), ValueError, ['g.yaml', 'is not UTF-8 text', "b'\\xe9'"],
        setup=lambda t: (_existing_grid(t), (t / 'g.yaml').write_bytes('name: g\ndescription: caf\u00e9\n'.encode('latin-1')))),
    Bad('grid_over_the_cell_cap', _grid({'name': 'g', 'fixed': GBASE, 'axes': {'seed': list(range(1000)), 'epochs': list(range(1000))}}),
        ValueError, ['1,000,000 cells, more than the cap of 100,000', 'max_cells=1000000', '--max-cells'], setup=_existing_grid),
    # ---- bad values, refused before anything runs
    Bad('grid_timeout_zero', _grid({'name': 'g', 'fixed': GBASE}, timeout=0), ValueError, ['timeout must be a positive whole number', 'got 0'],
        setup=_existing_grid),
    Bad('grid_timeout_nan', _grid({'name': 'g', 'fixed': GBASE}, timeout=float('nan')), ValueError, ['timeout', 'nan'], setup=_existing_grid),
    Bad('grid_device_absent', _grid({'name': 'g', 'fixed': {**GBASE, 'device': ABSENT_CUDA}}), ValueError,
        [f"device '{ABSENT_CUDA}'", 'nothing was run'], setup=_existing_grid),
    Bad('cell_device_malformed', lambda t: P.run_cell(progress=False, **TINY, device='cuda:abc'), ValueError, ["device 'cuda:abc'"]),
    Bad('cell_seed_above_32_bits', lambda t: P.run_cell(progress=False, **{**TINY, 'seed': 2**32}), ValueError, ['seed', '4294967295', '4294967296']),
    Bad('cell_seed_2_to_64', lambda t: P.run_cell(progress=False, **{**TINY, 'seed': 2**64}), ValueError, ['seed', '18446744073709551616']),
    Bad('cell_threads_too_many', lambda t: P.run_cell(progress=False, **{**TINY, 'threads': 1025}), ValueError, ['threads', '1024', '1025']),
    Bad('cell_n_boot_too_many', lambda t: P.run_cell(progress=False, **{**TINY, 'n_boot': 100_001}), ValueError, ['n_boot', '100000', '100001']),
    Bad('cell_num_shadows_too_many', lambda t: P.run_cell(progress=False, **{**TINY, 'num_shadows': 257}), ValueError, ['num_shadows', '256', '257']),
    Bad('cell_num_references_too_many', lambda t: P.run_cell(progress=False, **{**TINY, 'num_references': 1026}), ValueError,
        ['num_references', '1024', '1026']),
    # ---- odd folders and locks (the earlier grid 'g' must stay as it is)
    Bad('grid_lock_empty', _grid({'name': 'g', 'fixed': GBASE}), G.GridLockedError, ['.lock is corrupt (it is empty)', 'delete it'],
        setup=lambda t: (_existing_grid(t), (t / 'outputs' / 'g' / '.lock').write_text(''))),
    Bad('grid_lock_garbage', _grid({'name': 'g', 'fixed': GBASE}), G.GridLockedError, ['.lock is corrupt (it is not JSON)'],
        setup=lambda t: (_existing_grid(t), (t / 'outputs' / 'g' / '.lock').write_bytes(b'\x00\x01 not a lock'))),
    Bad('grid_lock_is_a_folder', _grid({'name': 'g', 'fixed': GBASE}), G.GridLockedError, ['.lock is corrupt (it is a folder)'],
        setup=lambda t: (_existing_grid(t), (t / 'outputs' / 'g' / '.lock').mkdir())),
    Bad('grid_runs_is_a_file', _grid({'name': 'g', 'fixed': GBASE}), ValueError, ['runs', 'is not a folder'],
        setup=lambda t: (_existing_grid(t), shutil.rmtree(t / 'outputs' / 'g' / 'runs'), (t / 'outputs' / 'g' / 'runs').write_text('x'))),
    Bad('grid_runs_is_a_symlink', _grid({'name': 'g', 'fixed': GBASE}), ValueError, ['runs', 'is a symbolic link'],
        setup=lambda t: (_existing_grid(t), (t / 'elsewhere').mkdir(), shutil.rmtree(t / 'outputs' / 'g' / 'runs'),
                         (t / 'outputs' / 'g' / 'runs').symlink_to(t / 'elsewhere'))),
    Bad('grid_cell_folder_is_a_file', _grid({'name': 'g', 'fixed': GBASE}), ValueError, ['run folder', G.expand_cells({'name': 'g', 'fixed': GBASE})[0].id, 'is not a folder'],
        setup=lambda t: (_existing_grid(t), (t / 'outputs' / 'g' / 'runs' / G.expand_cells({'name': 'g', 'fixed': GBASE})[0].id).write_text('x'))),
    Bad('grid_cell_folder_is_a_symlink', _grid({'name': 'g', 'fixed': GBASE}), ValueError, ['run folder', 'is a symbolic link'],
        setup=lambda t: (_existing_grid(t), (t / 'elsewhere').mkdir(),
                         (t / 'outputs' / 'g' / 'runs' / G.expand_cells({'name': 'g', 'fixed': GBASE})[0].id).symlink_to(t / 'elsewhere'))),
    Bad('grid_json_is_a_folder', _grid({'name': 'g', 'fixed': GBASE}), ValueError, ['grid.json', 'is a folder or a link'],
        setup=lambda t: (_existing_grid(t), (t / 'outputs' / 'g' / 'grid.json').unlink(), (t / 'outputs' / 'g' / 'grid.json').mkdir())),
    Bad('grid_summary_is_a_folder', _grid({'name': 'g', 'fixed': GBASE}), ValueError, ['summary.csv', 'is a folder or a link'],
        setup=lambda t: (_existing_grid(t), (t / 'outputs' / 'g' / 'summary.csv').unlink(), (t / 'outputs' / 'g' / 'summary.csv').mkdir())),
]


_dupes = sorted({c.id for c in CATALOGUE if [d.id for d in CATALOGUE].count(c.id) > 1})
if _dupes: raise ValueError(f'CATALOGUE ids must be distinct (each names one case in the report): {_dupes}')  # at collection


@pytest.mark.parametrize('case', [pytest.param(c, id=c.id) for c in CATALOGUE])
def test_bad_input_fails_clearly_and_writes_nothing(case, tmp_path, monkeypatch):
    (tmp_path / 'cwd').mkdir()
    monkeypatch.chdir(tmp_path / 'cwd')  # anything written relative to the working directory is seen too
    if case.setup: case.setup(tmp_path)
    before = snapshot(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        with pytest.raises(case.exc) as e:
            case.call(tmp_path)
    msg = str(e.value)
    for frag in case.match:
        assert frag.format(tmp=tmp_path) in msg, f'{frag!r} not in the message: {msg}'
    changes = diff(before, snapshot(tmp_path))  # outputs/ and the cache absent (or as the setup left them), nothing else
    assert not changes, f'a failed call changed the disk: {changes}'


# ================================================================ 2. faults
KILL_SCRIPT = '''
import json, sys, time
import mia_pruning.train as T
from mia_pruning.pipeline import run_cell
real = T.train_model
def slow(*a, **k):  # a wide window to kill in: each dense build pauses after training, before it is saved
    r = real(*a, **k); time.sleep(1.5); return r
T.train_model = slow
run_cell(progress=False, cache_dir=sys.argv[1], **json.loads(sys.argv[2]))
'''


def test_sigkill_mid_training_then_rerun_equals_an_uninterrupted_run(tmp_path, reference):
    cache = tmp_path / 'cache'
    proc = subprocess.Popen([sys.executable, '-c', KILL_SCRIPT, str(cache), json.dumps(TINY)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dense = cache / 'dense_model'
    deadline = time.time() + 180
    try:
        while time.time() < deadline:  # kill once the first dense model is cached and the next one is being built
            names = [p.name for p in dense.iterdir()] if dense.is_dir() else []
            if any(not n.startswith('.') for n in names) and any(n.endswith('.tmp') for n in names): break
            assert proc.poll() is None, f'the cell ended before it could be killed: {proc.stderr.read().decode()[-2000:]}'
            time.sleep(0.02)
        else: pytest.fail('no dense model was cached in time')
    finally:
        os.kill(proc.pid, signal.SIGKILL); proc.wait()
    assert proc.returncode == -signal.SIGKILL
    first = entries(cache)
    assert 1 <= len(first['dense_model']) < 1 + TINY['num_shadows'] and first['state_attack'] == [], first
    assert [p for p in dense.iterdir() if p.name.endswith('.tmp')], 'the kill did not land inside a dense build'
    kept = {n: _sha(dense / n / 'model.pt') for n in first['dense_model']}

    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        res = P.run_cell(progress=False, cache_dir=str(cache), **TINY)
    ref, ref_cache = reference
    assert canon(res.metrics) == canon(ref.metrics) and len(res.metrics) > 10
    assert canon(res.rows) == canon(ref.rows)
    for k in ref.scores: np.testing.assert_array_equal(res.scores[k], ref.scores[k])
    # the same artifacts as the uninterrupted run, every one complete; the model cached before the kill was reused
    assert entries(cache) == entries(ref_cache)
    c = ArtifactCache(cache)
    assert all(c.verify(cache / k / n) for k, names in entries(cache).items() for n in names)
    assert {n: _sha(dense / n / 'model.pt') for n in first['dense_model']} == kept
    for n in entries(cache)['dense_model']:  # and the models trained after the kill are the same models
        assert _sha(dense / n / 'model.pt') == _sha(ref_cache / 'dense_model' / n / 'model.pt')


MAIN_FILE = {'splits': 'data.npz', 'dense_model': 'model.pt', 'pruned_model': 'model.pt', 'state_features': 'features.npz', 'state_attack': 'scores.npz'}


@pytest.mark.parametrize('kind', KINDS)
def test_truncated_cache_file_is_detected_and_rebuilt_by_the_pipeline(kind, tmp_path, reference):
    ref, _ = reference
    cache = copy_cache(reference, tmp_path / 'cache')
    entry = cache / kind / entries(cache)[kind][0]
    f = entry / MAIN_FILE[kind]
    f.write_bytes(f.read_bytes()[:f.stat().st_size // 3])
    others = {e: snapshot(cache / k / e) for k, names in entries(cache).items() for e in names if e != entry.name}
    with pytest.warns(UserWarning, match=f'cache entry .*{entry.name} is corrupt or incomplete; rebuilding it'):
        if kind == 'splits':  # through get_splits itself, then the whole cell
            s = get_splits(load_dataset('digits'), 1797, seed=7, num_shadows=TINY['num_shadows'], cache=ArtifactCache(cache))  # keyed on the content, as the cell
            assert s.victim.sizes() == tuple(ref.provenance['split_sizes']['victim'])
        elif kind == 'dense_model':  # through dense_models itself, then the whole cell
            from mia_pruning.train import default_train_config
            dm = dense_models('digits', 'mlp', 7, TINY['num_shadows'], default_train_config('image', epochs=TINY['epochs']),
                              ArtifactCache(cache), device='cpu', progress=False)
            assert [dm.records[r]['key'] for r in ['victim', 'shadow0', 'shadow1']] == ref.provenance['cache_keys']['dense']
        res = P.run_cell(progress=False, cache_dir=str(cache), **TINY)
    assert ArtifactCache(cache).verify(entry) and f.stat().st_size > 0
    assert canon(res.metrics) == canon(ref.metrics)
    assert entries(cache) == entries(reference[1])
    assert {e: snapshot(cache / k / e) for k, names in entries(cache).items() for e in names if e != entry.name} == others  # only it was rebuilt


def test_failing_cell_inside_a_grid_leaves_the_other_cells_intact(tmp_path, reference, monkeypatch):
    ref, _ = reference
    cache = copy_cache(reference, tmp_path / 'cache')  # dense models are cache hits: the digits cells are fast
    monkeypatch.setenv('MIA_PRUNING_CACHE', str(cache))
    missing = tmp_path / 'no_such_data'
    spec = {'name': 'mixed', 'fixed': {k: v for k, v in TINY.items() if k not in ('dataset', 'sparsity')},
            'blocks': [{'fixed': {'dataset': 'digits', 'sparsity': 0.5}},  # complete before this run
                       {'fixed': {'dataset': 'purchase100', 'sparsity': 0.5, 'data_root': str(missing)}},  # fails
                       {'fixed': {'dataset': 'digits', 'sparsity': 0.6}}]}  # runs after the failure
    done, bad, after = [c.id for c in G.expand_cells(spec)]
    out = tmp_path / 'out'
    P.write_run(out / 'runs' / done, ref)  # the earlier complete result of the first cell (written from Python, no notebook)
    RUNS.finish_run(out / 'runs' / done, done, notebook=False)
    done_before = snapshot(out / 'runs' / done)
    rep = G.run_grid(spec, out_dir=out, workers=1, progress=False)
    assert rep.skipped == [done] and list(rep.failed) == [bad] and rep.ran == [after], rep
    assert 'FileNotFoundError' in rep.failed[bad] and 'purchase100' in rep.failed[bad]
    # its model tasks failed first (their tracebacks are kept); the cell never ran, so nothing of it looks complete
    assert not (out / 'runs' / bad / 'metrics.json').exists() and any('FileNotFoundError' in t.read_text() for t in (out / 'model_errors').iterdir())
    assert snapshot(out / 'runs' / done) == done_before  # byte for byte, same mtimes
    assert RUNS.is_complete(out / 'runs' / after) and RUNS.verify_run(out / 'runs' / after) == []  # with a finished notebook
    assert load_json(out / 'runs' / after / 'params.json')['params']['sparsity'] == 0.6
    mine = P.run_cell(progress=False, cache_dir=str(cache), **{**TINY, 'sparsity': 0.6})  # what that cell computes
    assert canon(load_json(out / 'runs' / after / 'metrics.json')) == canon(json.loads(json.dumps(mine.metrics)))
    df = pd.read_csv(out / 'summary.csv')
    assert sorted(set(df.cell_id)) == sorted([done, after]) and len(df) == 2 * 2 * 3
    assert sorted(set(df.sparsity)) == [0.5, 0.6]
    assert json.loads((out / 'grid.json').read_text())['cells'] == {done: 'complete', bad: 'failed', after: 'complete'}
    assert entries(cache)['dense_model'] == entries(reference[1])['dense_model']  # dense models reused, not retrained
    assert not missing.exists()


def _boom(name, real):
    def f(path, *a, **k):
        if Path(path).name == name: raise OSError(28, 'No space left on device', str(path))
        return real(path, *a, **k)
    return f


@pytest.mark.parametrize('previous', [False, True], ids=['fresh_folder', 'over_a_complete_run'])
@pytest.mark.parametrize('fail', ['scores.npz', 'rows.json', 'metrics.json'])
def test_error_while_writing_a_run_folder_leaves_no_metrics(fail, previous, tmp_path, reference, monkeypatch):
    res = reference[0]
    run = tmp_path / 'run'
    if previous:
        P.write_run(run, res)
        assert RUNS.verify_run(run, res.provenance['cell_id'], notebook=False) == []
    if fail == 'scores.npz': monkeypatch.setattr(RUNS, 'save_arrays', _boom(fail, RUNS.save_arrays))
    else: monkeypatch.setattr(RUNS, 'save_json', _boom(fail, RUNS.save_json))
    with pytest.raises(OSError, match='No space left'):
        P.write_run(run, res)
    assert not (run / 'metrics.json').exists() and 'metrics.json is missing' in RUNS.verify_run(run, notebook=False)
    assert not [p.name for p in run.iterdir() if p.name.endswith('.tmp')], 'a temp file was left behind'
    monkeypatch.undo()
    P.write_run(run, res)  # a later successful write completes the folder
    assert RUNS.verify_run(run, res.provenance['cell_id'], notebook=False) == []
    assert load_json(run / 'metrics.json') == json.loads(json.dumps(res.metrics))


def test_unserialisable_metric_fails_without_a_partial_metrics_file(tmp_path, reference):
    res = reference[0]
    bad = P.CellResult(res.params, {**res.metrics, 'oops': object()}, res.rows, res.states, res.provenance, res.divergence)
    with pytest.raises(TypeError, match='not JSON serialisable'):
        P.write_run(tmp_path / 'run', bad)
    assert not (tmp_path / 'run' / 'metrics.json').exists()
    assert not [p.name for p in (tmp_path / 'run').iterdir() if 'metrics' in p.name]


# ================================================================ 3. determinism through the experiment notebook
EVIL = 'x\'"; import os; os.system("touch {pwn}") #\n"""\\ {{}} %s $(touch {pwn}) `touch {pwn}`'


def test_same_cell_twice_through_the_notebook_gives_byte_identical_metrics(tmp_path, reference, monkeypatch):
    """The tiny cell as a one-cell grid through papermill and the experiment notebook, twice, into two output folders,
    each with its own fresh cache; both also equal the in-process run of the `reference` fixture (its own fresh cache).
    The second notebook run carries a hostile data_root (unused by digits) that must neither change anything nor run."""
    evil = EVIL.format(pwn=tmp_path / 'PWNED')
    runs = {}
    for tag, extra in (('a', {}), ('b', {'data_root': evil})):
        monkeypatch.setenv('MIA_PRUNING_CACHE', str(tmp_path / f'cache_{tag}'))
        rep = G.run_grid({'name': f'det-{tag}', 'fixed': {**TINY, **extra}}, out_dir=tmp_path / tag, workers=1, progress=False)
        assert rep.ok and len(rep.ran) == 1, rep
        runs[tag] = tmp_path / tag / 'runs' / rep.ran[0]
        assert entries(tmp_path / f'cache_{tag}') == entries(reference[1])  # the same artifacts, built from scratch
    runs['in_process'] = P.write_run(tmp_path / 'in_process', reference[0])
    a = runs['a']
    assert a.name == runs['b'].name == P.cell_id(reference[0].params)  # data_root does not change what a cell computes
    for tag in ('b', 'in_process'):
        for name in ('metrics.json', 'rows.json'):
            assert (runs[tag] / name).read_bytes() == (a / name).read_bytes(), (tag, name)
        sa, sb = np.load(a / 'scores.npz'), np.load(runs[tag] / 'scores.npz')
        assert sorted(sa.files) == sorted(sb.files)
        for k in sa.files: np.testing.assert_array_equal(sa[k], sb[k])
    # timings are kept apart, in params.json's provenance
    metrics = json.loads((a / 'metrics.json').read_text())
    assert len(metrics) > 10 and not [k for k in metrics if 'second' in k or 'time' in k]
    prov = {t: load_json(r / 'params.json') for t, r in runs.items()}
    assert all(p['provenance']['timings']['total'] > 0 for p in prov.values())
    assert prov['b']['params']['data_root'] == evil and prov['a']['params']['data_root'] == ''
    assert not list(tmp_path.rglob('PWNED')) and not list(Path.cwd().glob('PWNED'))


# ================================================================ 4. security
PKG = Path(mia_pruning.__file__).resolve().parent


def unsafe_loads(source: str, filename: str = '<src>') -> list[str]:
    """Unsafe deserialisation in `source`: torch.load without weights_only=True, pickle loading outside the restricted
    unpickler of data.py, np.load(allow_pickle=True), yaml.load without a safe loader, eval/exec, shell=True."""
    tree = ast.parse(source, filename)
    alias: dict[str, str] = {}
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            for a in n.names: alias[(a.asname or a.name).split('.')[0]] = a.name if a.asname else a.name.split('.')[0]
        elif isinstance(n, ast.ImportFrom) and n.module:
            for a in n.names: alias[a.asname or a.name] = f'{n.module}.{a.name}'

    def dotted(node) -> str | None:
        if isinstance(node, ast.Name): return alias.get(node.id, node.id)
        if isinstance(node, ast.Attribute):
            base = dotted(node.value)
            return f'{base}.{node.attr}' if base else None
        return None

    def kw(call, name):
        return next((k.value for k in call.keywords if k.arg == name), None)

    def is_const(v, val): return isinstance(v, ast.Constant) and v.value is val

    PICKLERS = ('pickle', '_pickle', 'cPickle', 'dill', 'cloudpickle', 'joblib', 'shelve', 'marshal')
    problems, calls, parents = [], {}, {}
    for n in ast.walk(tree):
        for c in ast.iter_child_nodes(n): parents[c] = n
        if isinstance(n, ast.Call): calls[id(n.func)] = n
    allowed_unpicklers = set()
    for n in ast.walk(tree):  # a pickle.Unpickler subclass is allowed only in data.py and only with a restrictive find_class
        if isinstance(n, ast.ClassDef) and any((dotted(b) or '').endswith('Unpickler') for b in n.bases):
            finds = [f for f in n.body if isinstance(f, ast.FunctionDef) and f.name == 'find_class']
            raises = finds and any(isinstance(x, ast.Raise) for x in ast.walk(finds[0]))
            if Path(filename).name == 'data.py' and raises: allowed_unpicklers.add(id(n))
            else: problems.append(f'{filename}:{n.lineno}: Unpickler subclass {n.name} without a restrictive find_class (or outside data.py)')
    for n in ast.walk(tree):
        if not isinstance(n, (ast.Attribute, ast.Name)) or isinstance(parents.get(n), ast.Attribute): continue
        name = dotted(n)
        if not name: continue
        call = calls.get(id(n))
        where = f'{filename}:{n.lineno}'
        if name in ('torch.load', 'torch.serialization.load'):
            if call is None or not is_const(kw(call, 'weights_only'), True):
                problems.append(f'{where}: {name} without weights_only=True')
        elif name.split('.')[0] in PICKLERS and name.split('.')[-1] in ('load', 'loads', 'Unpickler', 'open'):
            owner = parents.get(n)
            while owner is not None and not isinstance(owner, ast.ClassDef): owner = parents.get(owner)
            if not (name.endswith('Unpickler') and owner is not None and id(owner) in allowed_unpicklers):
                problems.append(f'{where}: {name} (arbitrary unpickling)')
        elif name in ('numpy.load', 'numpy.lib.npyio.load'):
            v = kw(call, 'allow_pickle') if call is not None else None
            if call is None or (v is not None and not is_const(v, False)):
                problems.append(f'{where}: {name} that may unpickle (allow_pickle must be absent or False)')
        elif name in ('pandas.read_pickle', 'yaml.unsafe_load', 'yaml.full_load', 'yaml.unsafe_load_all', 'torch.hub.load'):
            problems.append(f'{where}: {name}')
        elif name in ('yaml.load', 'yaml.load_all'):
            loader = dotted(kw(call, 'Loader')) if call is not None and kw(call, 'Loader') is not None else ''
            if not (loader or '').endswith(('SafeLoader', 'CSafeLoader', 'BaseLoader')):
                problems.append(f'{where}: {name} without a safe Loader')
        elif name in ('eval', 'exec') and call is not None and isinstance(n, ast.Name):
            problems.append(f'{where}: builtin {name}()')
        elif call is not None and name.startswith(('subprocess.', 'os.system', 'os.popen')):
            if name in ('os.system', 'os.popen') or is_const(kw(call, 'shell'), True):
                problems.append(f'{where}: {name} through a shell')
    return problems


def test_the_source_checker_finds_what_it_looks_for():
    bad = textwrap.dedent('''
        import torch, pickle, yaml, functools
        import numpy as np
        from torch import load as tl
        from pickle import loads
        torch.load("a")
        torch.load("a", weights_only=False)
        tl("a")
        f = functools.partial(torch.load, map_location="cpu")
        pickle.load(open("a", "rb"))
        loads(b"")
        np.load("a.npz", allow_pickle=True)
        yaml.load("x")
        eval("1")
        class U(pickle.Unpickler): pass
        import subprocess; subprocess.run("ls", shell=True)
    ''')
    found = unsafe_loads(bad, 'data.py')
    assert sorted({int(f.split(':')[1]) for f in found}) == list(range(6, 17)), found  # every line from torch.load on
    good = textwrap.dedent('''
        import torch, pickle, yaml
        import numpy as np
        torch.load("a", map_location="cpu", weights_only=True)
        np.load("a.npz", allow_pickle=False); np.load("a.npz")
        yaml.safe_load("x"); yaml.load("x", Loader=yaml.SafeLoader)
        model.eval()
        raise pickle.UnpicklingError("no")
        class Safe(pickle.Unpickler):
            def find_class(self, module, name): raise pickle.UnpicklingError(name)
        import subprocess; subprocess.run(["git", "status"])
    ''')
    assert unsafe_loads(good, 'data.py') == []
    assert unsafe_loads(good, 'grid.py')  # the restricted unpickler is allowed in data.py only


def test_package_source_loads_only_safely():
    files = sorted(PKG.glob('*.py'))
    assert {f.stem for f in files} >= {'core', 'data', 'train', 'prune', 'pipeline', 'grid', 'cli'}
    problems = [p for f in files for p in unsafe_loads(f.read_text(), str(f.relative_to(PKG.parent)))]
    assert problems == [], '\n'.join(problems)
    # and the one torch.load there is goes through core.load_checkpoint
    uses = [f.name for f in files if 'torch.load(' in f.read_text()]
    assert uses == ['core.py'], uses


def test_checkpoints_holding_code_are_refused(tmp_path):
    torch.save({'w': torch.zeros(2), 'x': _Evil(tmp_path / 'PWNED')}, tmp_path / 'evil.pt')
    with pytest.raises(Exception, match='Weights only load failed'):
        load_checkpoint(tmp_path / 'evil.pt')
    with pytest.raises(Exception, match='Weights only load failed'):
        load_pruned(tmp_path / 'evil.pt', 'mlp', 10, (1, 8, 8))
    assert not (tmp_path / 'PWNED').exists()


HOSTILE = [
    "'; import os; os.system('touch {pwn}') #\n\"\"\"",
    '"""; open(r"{pwn}", "w").close(); """',
    "\\'; __import__('os').system('touch {pwn}'); '",
    "line1\nline2\r\n\timport os; os.system('touch {pwn}')",
    '{{x}} %s %(y)s {{}} $HOME `touch {pwn}` $(touch {pwn}) ${{IFS}}',
    'üñí©ødé \u2028 \u2029 \x1b[31m \x00 end',
    'trailing backslash \\',
    '',
]


def test_real_template_receives_hostile_strings_as_literals():
    "papermill's injected cell for the experiment template is nothing but `name = <string literal>` lines."
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook
    nb = load_notebook_node(str(G.template_path()))
    strs = [k for k, v in P.CELL_DEFAULTS.items() if isinstance(v, str)] + ['out_dir']
    values = {k: HOSTILE[i % len(HOSTILE)].format(pwn='/tmp/PWNED') + f' #{k}' for i, k in enumerate(strs)}
    nb = parameterize_notebook(nb, values)
    injected = [c for c in nb.cells if 'injected-parameters' in c.metadata.get('tags', [])]
    assert len(injected) == 1
    tree = ast.parse(injected[0].source)
    got = {}
    for stmt in tree.body:
        assert isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name), ast.dump(stmt)
        got[stmt.targets[0].id] = ast.literal_eval(stmt.value)  # a literal: nothing to execute
    assert got == values


def test_hostile_strings_pass_through_papermill_as_data(tmp_path):
    import papermill as pm
    pwn = tmp_path / 'PWNED'
    values = {f'p{i}': s.format(pwn=pwn) for i, s in enumerate(HOSTILE)}
    odd = tmp_path / 'we\'ird "dir"'; odd.mkdir()
    nb = nbformat.v4.new_notebook(metadata={'kernelspec': {'name': 'python3', 'display_name': 'python3', 'language': 'python'}})
    params = nbformat.v4.new_code_cell('\n'.join(f"{k} = 'default'" for k in values) + "\nresult_path = ''")
    params.metadata['tags'] = ['parameters']
    nb.cells = [params, nbformat.v4.new_code_cell(
        'import json\n'
        f'vals = {{k: globals()[k] for k in {sorted(values)!r}}}\n'
        "open(result_path, 'w', encoding='utf-8').write(json.dumps(vals))\n")]
    nbformat.write(nb, str(tmp_path / 'tiny.ipynb'))
    (tmp_path / 'kernel_cwd').mkdir()
    pm.execute_notebook(str(tmp_path / 'tiny.ipynb'), str(odd / 'out.ipynb'), parameters={**values, 'result_path': str(odd / 'vals.json')},
                        kernel_name='python3', progress_bar=False, log_output=False, cwd=str(tmp_path / 'kernel_cwd'))
    got = json.loads((odd / 'vals.json').read_text(encoding='utf-8'))
    assert got == values
    for k in values: assert got[k].encode('utf-8') == values[k].encode('utf-8')  # byte-identical
    assert not pwn.exists() and not list(tmp_path.rglob('PWNED')) and not list(Path.cwd().glob('PWNED'))


TRAVERSAL = ['../escape', '../../escape', 'a/../../escape', '..', '.', '/ABS', 'a/b', 'a\\b', '~', '~root', '$HOME', '.hidden',
             '-rf', 'a b', 'a\nb', 'a\x00b', 'é', 'x' * 65, '', ' g', 'g ', 'g..h', 'runs/../../x', None, 5]


@pytest.mark.parametrize('name', TRAVERSAL, ids=[repr(n)[:20] for n in TRAVERSAL])
def test_grid_names_cannot_leave_the_output_folder(name, tmp_path, monkeypatch):
    sandbox = tmp_path / 'sandbox'
    outputs = sandbox / 'deep' / 'er' / 'outputs'  # '../..' from here still lands inside tmp_path, where we look
    outputs.mkdir(parents=True)
    monkeypatch.setenv('MIA_PRUNING_OUTPUTS', str(outputs))
    monkeypatch.setenv('MIA_PRUNING_CACHE', str(outputs / 'cache'))
    monkeypatch.setenv('HOME', str(sandbox / 'home'))
    (sandbox / 'cwd').mkdir(); monkeypatch.chdir(sandbox / 'cwd')
    if name == '/ABS': name = str(tmp_path / 'abs_target')
    spec = {'name': name, 'fixed': GBASE}
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match='is not allowed'):
        G.check_grid_name(name)
    with pytest.raises(ValueError, match='is not allowed|needs a name'):
        G.run_grid(spec, progress=False, workers=1)
    with pytest.raises(ValueError, match='is not allowed|needs a name'):
        G.as_spec(G.GridSpec(name=name, fixed=GBASE) if isinstance(name, str) else spec)
    assert not diff(before, snapshot(tmp_path))


def test_yaml_spec_names_are_checked_too(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'in').mkdir()
    (tmp_path / 'in' / 'up.yaml').write_text('name: ../../escape\nfixed: {dataset: digits, arch: mlp}\n')
    (tmp_path / 'in' / 'my grid.yaml').write_text('fixed: {dataset: digits, arch: mlp}\n')  # name from the stem: has a space
    before = snapshot(tmp_path)
    for f in ('up.yaml', 'my grid.yaml'):
        with pytest.raises(ValueError, match='is not allowed'):
            G.run_grid(tmp_path / 'in' / f, progress=False, workers=1)
    assert not diff(before, snapshot(tmp_path))
