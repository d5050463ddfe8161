"""Plug-ins named by import path (mia_pruning.plugins): your own dataset, architecture and attack in a one-cell grid, run in
forked and in fresh kernels through the `mia-pruning` command; an edited plug-in changes the cell's id and its models'
keys; a broken plug-in is refused before any training, naming itself. Built-in cells keep their ids."""
import json, os, shutil, subprocess, sys, textwrap
from pathlib import Path

import pytest

from mia_pruning import pipeline
from mia_pruning.kernels import can_fork

PKG = 'labplug'  # the plug-in package written by `plugin_folder`

NETS = '''
import torch.nn as nn
def tiny(num_classes, input_shape):
    "An architecture plug-in: (num_classes, input_shape) -> nn.Module."
    d = 1
    for s in input_shape: d *= s
    return nn.Sequential(nn.Flatten(), nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, num_classes))
def bad(num_classes, input_shape): return 'not a module'
'''
DATA = '''
from mia_pruning.data import MIADataset, load_dataset, subsample_dataset
def tiny_digits(root):
    "A dataset plug-in: load(root) -> MIADataset (here: 300 samples of scikit-learn's digits)."
    ds = subsample_dataset(load_dataset('digits'), 300, 0)
    return MIADataset('tiny_digits', ds.x, ds.y, ds.num_classes, ds.kind)
def wrong(root): return [1, 2, 3]
'''
ATTACKS = '''
from mia_pruning.attacks import Attack
def _true_class_confidence(shadow, target, ctx):
    s = target.py
    return s, s >= 0.5, {}
mine = Attack('mine', _true_class_confidence, 'threshold', 'a test plug-in')
'''

BUILTIN_IDS = [  # computed with the code before plug-ins existed: built-in cells keep their ids and model keys
    ({}, 'digits-cnn-l1_unstructured-0.7-none-s7-edf1add073', 'pruned-reference3-digits-cnn-s7-55ce503a7853'),
    ({'dataset': 'digits', 'arch': 'cnn', 'prune_method': 'l1_structured', 'defense': 'ppb', 'seed': 3, 'attacks': 'conf,loss',
      'control': 'both'}, 'digits-cnn-l1_structured-0.7-ppb-s3-f1c74ae253', 'control_matched-shadow2-digits-cnn-s3-b882d80359b6'),
    ({'arch': 'cnn', 'prune_method': 'slimming', 'sparsity': 0.5, 'attacks': 'all', 'num_references': 4, 'inference': 'plain'},
     'digits-cnn-slimming-0.5-none-s7-af23d3edc0', 'pruned-reference3-digits-cnn-s7-ae815f2e89a6'),
    ({'dataset': 'digits', 'arch': 'mlp', 'defense': 'label_smoothing', 'defense_param': 0.1, 'shadow_prune_method': 'global_unstructured',
      'attacks': 'lira_online,rmia,gap'}, 'digits-mlp-l1_unstructured-0.7-label_smoothing-s7-66b064496b',
     'pruned-reference3-digits-mlp-s7-1f6a09feaf73'),
]


@pytest.fixture
def plugin_folder(tmp_path, monkeypatch):
    "A folder holding the plug-in package; this process's sys.path, PYTHONPATH and modules are restored afterwards."
    root = tmp_path / 'project'
    (root / PKG).mkdir(parents=True)
    (root / PKG / '__init__.py').write_text('')
    for name, src in (('nets', NETS), ('data', DATA), ('attacks', ATTACKS)): (root / PKG / f'{name}.py').write_text(textwrap.dedent(src))
    (root / PKG / 'broken.py').write_text('import a_module_that_does_not_exist_xyz\n')
    monkeypatch.delenv('PYTHONPATH', raising=False)  # restored at teardown (plug-ins export their folder into it)
    monkeypatch.syspath_prepend(str(root))
    yield root
    for m in [m for m in sys.modules if m == PKG or m.startswith(PKG + '.')]: del sys.modules[m]


def cli(*args, cwd):
    "The `mia-pruning` console script, run from `cwd` (the user's project folder; it is not on the script's sys.path)."
    exe = shutil.which('mia-pruning') or str(Path(sys.executable).with_name('mia-pruning'))
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    return subprocess.run([exe, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_built_in_cells_keep_their_ids():
    for params, cid, last_model in BUILTIN_IDS:
        assert pipeline.cell_id(params) == cid
        assert pipeline.cell_models(params)[-1].key == last_model


def test_plugin_source_is_in_the_cell_id_and_the_model_keys(plugin_folder):
    params = {'dataset': f'{PKG}.data:tiny_digits', 'arch': f'{PKG}.nets:tiny', 'attacks': 'conf', 'num_references': 0, 'num_shadows': 2}
    cid = pipeline.cell_id(params)
    assert cid.startswith('tiny_digits-tiny-l1_unstructured-0.7-none-s7-')  # the readable part: the plug-ins' names
    keys = [j.key for j in pipeline.cell_models(params)]
    assert all('/' not in k and ':' not in k for k in keys)  # they name files
    p = pipeline.resolve_params(params)
    assert p['arch'].startswith(f'{PKG}.nets:tiny@') and pipeline.cell_id(p) == cid  # pinned, and pinning is idempotent
    nets = plugin_folder / PKG / 'nets.py'
    nets.write_text(nets.read_text().replace('nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, num_classes)', 'nn.Linear(d, num_classes)'))
    new_keys = [j.key for j in pipeline.cell_models(params)]
    assert pipeline.cell_id(params) != cid
    assert not set(new_keys) & set(keys)  # every model: the dense ones build the arch, the pruned ones start from them
    with pytest.raises(ValueError, match='has changed since it was pinned'): pipeline.cell_id(p)  # the old resolution is refused
    data_only = {**params, 'arch': 'mlp'}  # the dataset plug-in's source is in its models' keys too
    before = pipeline.cell_models(data_only)[0].key
    (plugin_folder / PKG / 'data.py').write_text((plugin_folder / PKG / 'data.py').read_text() + '\n# edited\n')
    assert pipeline.cell_models(data_only)[0].key != before


def test_bad_plugins_are_refused_before_any_work(plugin_folder, tmp_path):
    spec = tmp_path / 'bad.yaml'
    spec.write_text(textwrap.dedent(f'''
        axes: {{arch: ['{PKG}.nets:bad', '{PKG}.nets:absent', '{PKG}.broken:net', '{PKG}.nowhere:net']}}
        fixed: {{dataset: digits, num_shadows: 2, attacks: conf, num_references: 0, n_boot: 0}}
        '''))
    r = cli('grid', spec, '--out', tmp_path / 'out', '--no-progress', cwd=plugin_folder)
    assert r.returncode == 2, r.stdout + r.stderr
    assert '4 invalid cell(s)' in r.stderr
    assert f"plug-in arch {PKG}.nets:bad" in r.stderr and "returned a str ('not a module')" in r.stderr and 'expected an nn.Module' in r.stderr
    assert f"plug-in {PKG}.nets:absent: {PKG}.nets has no name 'absent'" in r.stderr
    assert f'plug-in {PKG}.broken:net: importing {PKG}.broken failed: ModuleNotFoundError' in r.stderr
    assert f"plug-in {PKG}.nowhere:net: module '{PKG}.nowhere' cannot be imported" in r.stderr
    assert not (tmp_path / 'out' / 'runs').exists() and not (tmp_path / 'outputs' / 'cache').exists()  # nothing trained
    r = cli('run', f'dataset={PKG}.data:wrong', '--no-progress', cwd=plugin_folder)
    assert r.returncode == 2 and f'plug-in dataset {PKG}.data:wrong' in r.stderr and 'returned a list' in r.stderr, r.stderr


@pytest.mark.skipif(not can_fork(), reason='kernels are forked on Linux only')
def test_a_grid_of_plugins_runs_in_forked_and_fresh_kernels(plugin_folder, tmp_path):
    attack = f'{PKG}.attacks:mine'
    spec = tmp_path / 'mine.yaml'
    spec.write_text(textwrap.dedent(f'''
        fixed: {{dataset: '{PKG}.data:tiny_digits', arch: '{PKG}.nets:tiny', num_shadows: 2, epochs: 2, sparsity: 0.5,
                 attacks: 'conf,{attack}', num_references: 0, n_boot: 0, attack_epochs: 1}}
        '''))
    ids = {}
    for kernels in ('forked', 'fresh'):
        out = tmp_path / kernels
        r = cli('grid', spec, '--out', out, '--workers', '1', '--no-progress', '--no-report', '--kernels', kernels, cwd=plugin_folder)
        assert r.returncode == 0, r.stdout + r.stderr
        (run,) = (out / 'runs').iterdir()
        ids[kernels] = run.name
        rec = json.loads((run / 'params.json').read_text())
        assert rec['params']['arch'] == f'{PKG}.nets:tiny'  # the spec as given
        plugins = rec['provenance']['plugins']
        assert plugins['arch']['spec'] == f'{PKG}.nets:tiny' and len(plugins['arch']['sha256']) == 64
        assert [a['spec'] for a in plugins['attacks']] == [attack] and plugins['dataset']['spec'] == f'{PKG}.data:tiny_digits'
        rows = json.loads((run / 'rows.json').read_text())
        names = {r['attack'] for r in rows}
        assert 'conf' in names and any(n.startswith(attack + '@') for n in names)  # the plug-in attack ran, pinned to its source
        assert {r['model_state'] for r in rows} == {'dense', 'pruned'}
    assert ids['forked'] == ids['fresh'] and ids['forked'].startswith('tiny_digits-tiny-l1_unstructured-0.5-none-s7-')
