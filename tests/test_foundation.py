"Core, models and training behaviour that the notebooks' lesson cells do not cover in full."
import json
import warnings

import numpy as np
import pytest
import torch

from mia_pruning.core import ArtifactCache, config_hash, get_device, save_json, seed_everything
from mia_pruning.data import load_dataset, make_splits
from mia_pruning.models import ARCHS, build_model
from mia_pruning.train import TrainConfig, train_model, dense_models, predict_proba, accuracy

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
