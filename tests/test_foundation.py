"Core, models and training behaviour that the notebooks' lesson cells do not cover in full."
import json
import warnings

import numpy as np
import pytest
import torch

from mia_pruning.core import ArtifactCache, config_hash, get_device, save_json, seed_everything
from mia_pruning.data import load_dataset, make_splits
from mia_pruning.models import ARCHS, build_model
from mia_pruning.train import TrainConfig, train_model, predict_proba, accuracy
from mia_pruning.fused import dense_models

SHAPES = {'mlp': (1, 8, 8), 'cnn': (1, 28, 28), 'resnet20': (3, 32, 32), 'resnet18': (3, 32, 32),
          'densenet121': (3, 32, 32), 'vgg16_bn': (3, 32, 32), 'column_fc': (600,)}


def test_arch_registry_matches_the_contract():
    assert set(ARCHS) == set(SHAPES)


@pytest.mark.parametrize('arch', list(SHAPES))
def test_every_arch_forward_and_backward(arch):
    m = build_model(arch, 7, SHAPES[arch])
    out = m(torch.randn(3, *SHAPES[arch]))
    assert out.shape == (3, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)


def test_study_head_and_init():
    vgg = build_model('vgg16_bn', 10, (3, 32, 32))
    dims = [(l.in_features, l.out_features) for l in vgg.classifier if isinstance(l, torch.nn.Linear)]
    assert dims == [(512, 4096), (4096, 4096), (4096, 10)]
    fc = build_model('column_fc', 100, (600,))
    assert [(l.in_features, l.out_features) for l in fc if isinstance(l, torch.nn.Linear)] == [(600, 256), (256, 128), (128, 100)]
    assert all(float(l.bias.detach().abs().sum()) == 0 for l in fc if isinstance(l, torch.nn.Linear))


@pytest.mark.parametrize('args,match', [(('mlp', 1, (4,)), 'num_classes'), (('resnet18', 10, (600,)), 'image inputs'),
                                        (('mlp', 10, (0, 3)), 'input_shape'), (('ResNet18', 10, (3, 32, 32)), 'unknown arch')])
def test_build_model_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        build_model(*args)


def test_device_choice():
    assert get_device('auto').type in ('cpu', 'cuda', 'mps')
    with pytest.raises(ValueError, match='unknown device'):
        get_device('gpu')
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match='not available'):
            get_device('cuda:0')


def test_config_hash_is_stable_across_key_order_and_types():
    a = {'dataset': 'digits', 'sparsity': 0.5, 'axes': {'seed': [7, 8]}}
    b = {'axes': {'seed': (np.int64(7), 8)}, 'sparsity': np.float64(0.5), 'dataset': 'digits'}
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(a | {'sparsity': 0.6})


@pytest.mark.parametrize('damage', ['truncate', 'delete_manifest', 'delete_file', 'flip_byte'])
def test_cache_detects_damage_and_rebuilds(tmp_path, damage):
    cache, calls = ArtifactCache(tmp_path), []

    def build():
        calls.append(1)
        return {'w': torch.arange(100.0)}
    cache.load_or_build('model', {'k': 1}, build)
    entry = cache.entry('model', {'k': 1})
    f = entry / 'data.pt'
    if damage == 'truncate':
        f.write_bytes(f.read_bytes()[:50])
    elif damage == 'delete_manifest':
        (entry / 'manifest.json').unlink()
    elif damage == 'delete_file':
        f.unlink()
    else:
        b = bytearray(f.read_bytes())
        b[-10] ^= 0xFF
        f.write_bytes(bytes(b))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        out = cache.load_or_build('model', {'k': 1}, build)
    assert len(calls) == 2
    assert torch.equal(out['w'], torch.arange(100.0))
    assert cache.verify(entry)


def test_save_json_refuses_unserialisable_and_keeps_old(tmp_path):
    p = save_json(tmp_path / 'm.json', {'a': 1})
    with pytest.raises(TypeError, match='not JSON serialisable'):
        save_json(p, {'a': object()})
    assert json.loads(p.read_text()) == {'a': 1}
    assert [x.name for x in tmp_path.iterdir()] == ['m.json']


def test_nonfinite_inputs_stop_training_with_a_clear_error():
    ds = load_dataset('digits')
    s = make_splits(len(ds), num_shadows=1)
    x = ds.x.clone()
    x[s.victim.train[:5]] = float('nan')
    bad = type(ds)(ds.name, x, ds.y, ds.num_classes, ds.kind)
    with pytest.raises(FloatingPointError, match='non-finite loss'):
        train_model(build_model('mlp', 10, ds.input_shape), bad, s.victim.train, s.victim.dev, TrainConfig(epochs=1), device='cpu')


def test_training_is_reproducible_and_learns(tmp_path):
    from mia_pruning.core import ArtifactCache
    cache = ArtifactCache(tmp_path)
    cfg = TrainConfig(epochs=15, patience=5)
    a = dense_models('digits', 'mlp', num_shadows=1, cfg=cfg, cache=cache, device='cpu', progress=False)
    ds, s = a.dataset, a.splits
    assert accuracy(a.victim, ds, s.victim.test) > 0.85
    b = dense_models('digits', 'mlp', num_shadows=1, cfg=cfg, cache=ArtifactCache(tmp_path / 'other'), device='cpu', progress=False)
    np.testing.assert_array_equal(predict_proba(a.victim, ds, s.victim.test), predict_proba(b.victim, ds, s.victim.test))
    seed_everything(0)


# ---------------------------------------------------------------- the cache heals every damaged state
def _manifest(entry, files):
    (entry / 'manifest.json').write_text(json.dumps({'kind': 'model', 'key': {'k': 1}, 'files': files}))


def _forge(entry):
    "Garbage bytes in data.pt with a manifest that matches them."
    import hashlib
    (entry / 'data.pt').write_bytes(b'garbage that is not a checkpoint')
    b = (entry / 'data.pt').read_bytes()
    _manifest(entry, {'data.pt': {'size': len(b), 'sha256': hashlib.sha256(b).hexdigest()}})


DAMAGES = {
    'entry_replaced_by_a_file': lambda e: (__import__('shutil').rmtree(e), e.write_text('not a folder')),
    'entry_is_a_dangling_link': lambda e: (__import__('shutil').rmtree(e), e.symlink_to(e.parent / 'nowhere')),
    'entry_is_an_empty_folder': lambda e: [p.unlink() for p in e.iterdir()],
    'kind_folder_replaced_by_a_file': lambda e: (__import__('shutil').rmtree(e.parent), e.parent.write_text('x')),
    'manifest_lists_no_files': lambda e: _manifest(e, {}),
    'manifest_lists_another_file': lambda e: ((e / 'other.bin').write_bytes(b'x'),
                                              _manifest(e, {'other.bin': {'size': 1, 'sha256': __import__('hashlib').sha256(b'x').hexdigest()}})),
    'manifest_not_json': lambda e: (e / 'manifest.json').write_text('{not json'),
    'manifest_files_not_a_dict': lambda e: _manifest(e, ['data.pt']),
    'manifest_names_a_path_outside': lambda e: _manifest(e, {'../../x': {'size': 1, 'sha256': '0'}}),
    'manifest_is_a_folder': lambda e: ((e / 'manifest.json').unlink(), (e / 'manifest.json').mkdir()),
    'forged_manifest_over_garbage': _forge,
}


@pytest.mark.parametrize('damage', list(DAMAGES))
def test_cache_heals_every_damaged_state(tmp_path, damage):
    cache, calls = ArtifactCache(tmp_path), []

    def build():
        calls.append(1)
        return {'w': torch.arange(10.0)}
    cache.load_or_build('model', {'k': 1}, build)
    entry = cache.entry('model', {'k': 1})
    DAMAGES[damage](entry)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        out = cache.load_or_build('model', {'k': 1}, build)
    assert len(calls) == 2 and torch.equal(out['w'], torch.arange(10.0))
    assert any('rebuilding' in str(x.message) for x in w)
    assert cache.verify(entry, ('data.pt',)) and entry.is_dir() and not entry.is_symlink()
    assert torch.equal(cache.load_or_build('model', {'k': 1}, build)['w'], torch.arange(10.0)) and len(calls) == 2  # healed for good


def test_cache_root_that_is_a_file_is_an_error_naming_it(tmp_path):
    (tmp_path / 'c').write_text('x')
    with pytest.raises(NotADirectoryError, match=str(tmp_path / 'c')):
        ArtifactCache(tmp_path / 'c').load_or_build('model', {}, lambda: {'w': torch.ones(1)})
    assert (tmp_path / 'c').read_text() == 'x'


# ---------------------------------------------------------------- refused checkpoints name the path
class _Evil:
    def __reduce__(self): return (print, ('pwned',))


@pytest.mark.parametrize('case', ['pickled_code', 'a_list', 'a_tensor', 'garbage', 'empty', 'truncated', 'a_folder'])
def test_refused_checkpoint_names_the_path(tmp_path, case):
    import pickle
    from mia_pruning.core import load_checkpoint, save_checkpoint
    p = tmp_path / 'sub' / 'victim.pt'; p.parent.mkdir()
    if case == 'pickled_code': torch.save({'w': torch.ones(1), 'x': _Evil()}, p)
    elif case == 'a_list': torch.save([1, 2], p)
    elif case == 'a_tensor': torch.save(torch.ones(3), p)
    elif case == 'garbage': p.write_bytes(b'hello, this is not a checkpoint')
    elif case == 'empty': p.write_bytes(b'')
    elif case == 'truncated':
        save_checkpoint(p, {'w': torch.arange(1000.0)}); p.write_bytes(p.read_bytes()[:300])
    else: p.mkdir()
    exc = pickle.UnpicklingError if case == 'pickled_code' else ValueError
    with pytest.raises(exc) as e:
        load_checkpoint(p)
    assert str(p) in str(e.value)
    if case == 'pickled_code': assert 'Weights only load failed' in str(e.value)
    if case in ('a_list', 'a_tensor'): assert 'not a checkpoint' in str(e.value)


# ---------------------------------------------------------------- provenance from outside the clone
def test_git_commit_is_recorded_when_run_from_outside_the_clone(tmp_path):
    import subprocess, sys
    import mia_pruning
    from mia_pruning.core import project_root, git_commit
    root = project_root(mia_pruning.__file__)
    if root is None or not (root / '.git').exists(): pytest.skip('the package is not imported from a git checkout')
    head = subprocess.run(['git', '-C', str(root), 'rev-parse', 'HEAD'], capture_output=True, text=True).stdout.strip()
    out = subprocess.run([sys.executable, '-c', 'from mia_pruning.core import env_info; print(env_info("cpu")["git_commit"])'],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == head and len(head) == 40
    assert git_commit(tmp_path) is None  # a folder that is not a checkout
