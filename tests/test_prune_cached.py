"Tests of mia_pruning.pruned: save/load, the one cache key (structured_bn only where it matters), cache hits."
import numpy as np
import pytest
import torch
from torch import nn

from mia_pruning.models import build_model
import mia_pruning.prune as P
from mia_pruning.core import ArtifactCache
from mia_pruning.data import load_dataset, make_splits, Split
from mia_pruning.prune import prune_model, state_hash
from mia_pruning.pruned import pruned_model, pruned_model_key, save_pruned, load_pruned
from mia_pruning.train import TrainConfig
from test_prune import SHAPES, trained_looking  # one definition of the test models


@pytest.fixture(scope='module')
def digits_small():
    ds = load_dataset('digits')
    v = make_splits(len(ds), seed=7, num_shadows=1).victim
    return ds, Split(v.train[:96], v.dev[:48], v.test[:48])


def test_save_load_round_trip(tmp_path):
    m = prune_model(trained_looking('resnet20'), 'l2_structured', 0.5)
    save_pruned(tmp_path / 'm.pt', m, {'method': 'l2_structured', 'sparsity': np.float32(0.5)})
    m2, meta = load_pruned(tmp_path / 'm.pt', 'resnet20', 10, (3, 32, 32))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad(): assert torch.equal(m.eval()(x), m2(x))
    assert meta == {'method': 'l2_structured', 'sparsity': 0.5} and state_hash(m) == state_hash(m2)
    assert P.pruned_parameters(m) and not P.pruned_parameters(m2)


def test_pruned_model_cache_hit_does_not_retrain(tmp_path, digits_small, monkeypatch):
    ds, split = digits_small
    dense = build_model('cnn', 10, (1, 8, 8), seed=0)
    cfg = TrainConfig(epochs=2, batch_size=32, patience=0)
    calls = []
    real = P.train_model
    monkeypatch.setattr(P, 'train_model', lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    kw = dict(cfg=cfg, seed=0, cache=ArtifactCache(tmp_path), progress=False)
    a, ia = pruned_model(dense, ds, split, 'cnn', 'l1_unstructured', 0.5, **kw)
    assert len(calls) == 1 and not ia['cache_hit']
    b, ib = pruned_model(dense, ds, split, 'cnn', 'l1_unstructured', 0.5, **kw)
    assert len(calls) == 1 and ib['cache_hit']
    assert state_hash(a) == state_hash(b) and ia['report'] == ib['report']
    assert abs(ib['report']['measured'] - 0.5) <= 0.02 and 0 <= ib['test_acc'] <= 1
    pruned_model(dense, ds, split, 'cnn', 'l1_unstructured', 0.6, **kw)          # another key: trains
    assert len(calls) == 2
    with pytest.raises(ValueError, match='none, ppb'):
        pruned_model(dense, ds, split, 'cnn', 'l1_unstructured', 0.5, defense='shield', **kw)
    with pytest.raises(ValueError, match="structured_bn must be"):
        pruned_model(dense, ds, split, 'cnn', 'l1_structured', 0.5, structured_bn='both', **kw)
    assert len(calls) == 2                                                         # refused before any work


def test_structured_bn_is_in_the_key_only_where_it_changes_the_model(tmp_path, digits_small):
    ds, split = digits_small
    cfg = TrainConfig(epochs=2, batch_size=32, patience=0)
    key = lambda method, **k: pruned_model_key('d', ds, split, 'cnn', method, 0.5, cfg, **k)
    for m in ('l1_structured', 'l2_structured'):
        assert key(m) != key(m, structured_bn='zero') and key(m)['structured_bn'] == 'keep'
    for m in ('l1_unstructured', 'global_unstructured', 'slimming', 'imp'):
        assert key(m) == key(m, structured_bn='zero') and 'structured_bn' not in key(m)
    dense = trained_looking('cnn')        # BatchNorm betas away from 0, as after training
    kw = dict(cfg=cfg, seed=0, cache=ArtifactCache(tmp_path), progress=False)
    a, ia = pruned_model(dense, ds, split, 'cnn', 'l1_structured', 0.5, **kw)
    b, ib = pruned_model(dense, ds, split, 'cnn', 'l1_structured', 0.5, structured_bn='zero', **kw)
    assert not ib['cache_hit'] and ia['cache_entry'] != ib['cache_entry'] and state_hash(a) != state_hash(b)
    assert (ia['structured_bn'], ib['structured_bn'], ia['structured_bn_applies']) == ('keep', 'zero', True)
    bn_a, bn_b = a.features[0][1], b.features[0][1]
    dead = (a.features[0][0].weight.flatten(1) == 0).all(1)
    assert int(dead.sum()) == 16 and bool((bn_b.bias[dead] == 0).all()) and bool((bn_a.bias[dead] != 0).all())
    _, ic = pruned_model(dense, ds, split, 'cnn', 'l1_unstructured', 0.5, structured_bn='zero', **kw)
    _, id_ = pruned_model(dense, ds, split, 'cnn', 'l1_unstructured', 0.5, **kw)
    assert id_['cache_hit'] and ic['cache_entry'] == id_['cache_entry']          # ignored, so shared
    assert (ic['structured_bn'], id_['structured_bn'], id_['structured_bn_applies']) == ('zero', 'keep', False)


def test_one_key_definition():
    "Exactly one definition of the pruned-model cache key in the package."
    import pathlib, re
    src = {p.name: p.read_text() for p in pathlib.Path(P.__file__).parent.glob('*.py') if p.name != '_modidx.py'}
    builds = [n for n, s in src.items() for _ in re.finditer(r"(get_or_build|_cached_treatment)\(\s*'(dp_)?pruned_model'", s)]
    assert builds == ['pruned.py']
    assert len(re.findall(r"get_or_build\(", src['pruned.py'])) == 1  # the one cache tail pruned and control models share
    assert sum(len(re.findall(r"'recipe': cfg\.key\(\) if PRUNE_METHODS\[method\]\.needs_data", s)) for s in src.values()) == 1  # the recipe part of the key
