"Tests of mia_pruning.prune: exact counts, the structured methods' BatchNorm semantics, masks held through fine-tuning."
import numpy as np
import pytest
import torch
from torch import nn

import mia_pruning.prune as P
from mia_pruning.data import MIADataset, Split, load_dataset, make_splits
from mia_pruning.models import build_model
from mia_pruning.prune import (PRUNE_METHODS, STRUCTURED_BN, prune_model, sparsity_report, prune_count, fine_tune, state_hash,
                               effective_param, current_mask, count_macs, slimming_penalty, check_model_for)
from mia_pruning.train import TrainConfig

SHAPES = {'resnet20': (3, 32, 32), 'cnn': (1, 8, 8)}
ONE_SHOT = [m for m in PRUNE_METHODS if m != 'imp']


def trained_looking(arch, seed=0):
    "A model whose BatchNorms have distinct, trained-looking scales and statistics (untrained ones all have gamma 1)."
    m = build_model(arch, 10, SHAPES[arch], seed=seed).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for b in m.modules():
            if isinstance(b, nn.BatchNorm2d):
                b.weight.uniform_(0, 1, generator=g); b.bias.uniform_(-.5, .5, generator=g)
                b.running_mean.uniform_(-.5, .5, generator=g); b.running_var.uniform_(.5, 2, generator=g)
    return m


def expected_units(model, method, s):
    "The study's count, computed independently of the module: int(n*s) per layer or over the global set."
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if method == 'l1_unstructured': return sum(int(round(m.weight.numel() * s * 1e6)) // 10**6 for m in layers)
    if method in ('l1_structured', 'l2_structured'): return sum(int(round(m.out_channels * s * 1e6)) // 10**6 for m in convs)
    if method == 'slimming':
        n = sum(b.num_features for b in model.modules() if isinstance(b, nn.BatchNorm2d))
        return int(round(n * s * 1e6)) // 10**6
    return int(round(sum(m.weight.numel() for m in layers) * s * 1e6)) // 10**6  # global_unstructured, imp step


@pytest.mark.parametrize('arch', list(SHAPES))
@pytest.mark.parametrize('method', ONE_SHOT)
@pytest.mark.parametrize('s', [0.5, 0.9])
def test_one_shot_sparsity_matches_target(arch, method, s):
    m = prune_model(trained_looking(arch), method, s)
    rep = sparsity_report(m, method, s, input_shape=None)
    assert abs(rep['measured'] - s) <= 0.02
    assert rep['pruned_units'] == expected_units(m, method, s)
    assert rep['unit'] == PRUNE_METHODS[method].unit


def test_rankings_remove_the_smallest_units():
    m = prune_model(trained_looking('cnn'), 'l1_unstructured', 0.6)
    for layer in [x for x in m.modules() if isinstance(x, (nn.Conv2d, nn.Linear))]:
        w, keep = effective_param(layer, 'weight'), current_mask(layer, 'weight')
        assert layer.weight_orig[~keep].abs().max() <= layer.weight_orig[keep].abs().min()
        assert bool((w[~keep] == 0).all())
    m = prune_model(trained_looking('cnn'), 'l2_structured', 0.5)
    conv, bn = m.features[2][0], m.features[2][1]
    norms = conv.weight_orig.detach().flatten(1).norm(dim=1)
    dead = ~current_mask(conv, 'weight').flatten(1).any(1)
    assert int(dead.sum()) == 32 and norms[dead].max() <= norms[~dead].min()
    assert bool((bn.bias[dead] != 0).all())                                    # the study's: beta untouched
    m = prune_model(trained_looking('resnet20'), 'slimming', 0.7)
    gammas = torch.cat([b.weight_orig.detach().abs() for b in m.modules() if isinstance(b, nn.BatchNorm2d)])
    kept = torch.cat([current_mask(b, 'weight') for b in m.modules() if isinstance(b, nn.BatchNorm2d)])
    assert gammas[~kept].max() <= gammas[kept].min()                           # one global threshold
    conv, bn = m.layers[0].conv1, m.layers[0].bn1                              # the producing conv goes too
    assert torch.equal(current_mask(conv, 'weight').flatten(1).any(1), current_mask(bn, 'weight'))


def test_macs_known_answer():
    tiny = nn.Sequential(nn.Conv2d(2, 3, 1, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(48, 2))
    assert count_macs(tiny, (2, 4, 4)) == {'dense': 192, 'effective': 192}
    P.remove_channels(tiny[0], torch.tensor([True, False, True]))
    assert count_macs(tiny, (2, 4, 4)) == {'dense': 192, 'effective': 128}   # 32 conv + 32 linear MACs gone


@pytest.fixture(scope='module')
def digits_small():
    ds = load_dataset('digits')
    v = make_splits(len(ds), seed=7, num_shadows=1).victim
    return ds, Split(v.train[:96], v.dev[:48], v.test[:48])


@pytest.mark.parametrize('method', ['l1_unstructured', 'l1_structured', 'slimming'])
def test_fine_tune_keeps_zeros(digits_small, method):
    ds, split = digits_small
    m = prune_model(trained_looking('cnn'), method, 0.7)
    masks = {k: current_mask(m.get_submodule(mn), pn).clone() for k, (mn, pn) in enumerate(P.pruned_parameters(m))}
    hidden = {k: m.get_submodule(mn)._parameters[pn + '_orig'].detach().clone() for k, (mn, pn) in enumerate(P.pruned_parameters(m))}
    calls = []
    def objective(model, x, y, logits):
        calls.append(1); return nn.functional.cross_entropy(logits, y)
    res = fine_tune(m, ds, split, TrainConfig(epochs=4, batch_size=32, weight_decay=0.1, patience=0), seed=0,
                    objective=objective, progress=False)
    assert len(res.history) == 2 and len(calls) > 0          # epochs // 2, through the objective hook
    moved = False
    for k, (mn, pn) in enumerate(P.pruned_parameters(m)):
        mod = m.get_submodule(mn)
        assert torch.equal(current_mask(mod, pn), masks[k])
        assert bool((effective_param(mod, pn)[~masks[k]] == 0).all())
        moved |= bool((mod._parameters[pn + '_orig'].detach()[~masks[k]] != hidden[k][~masks[k]]).any())
    assert moved   # Adam's weight decay did change the hidden values, and the masks still held them at zero
    assert abs(sparsity_report(m, method, 0.7)['measured'] - 0.7) <= 0.02


@pytest.mark.parametrize('bad', [1.0, -0.1, 1.5, float('nan'), True, '0.5'])
def test_bad_sparsity_raises_before_change(bad):
    m = build_model('cnn', 10, (1, 8, 8), seed=0)
    before = state_hash(m)
    with pytest.raises(ValueError, match=r'\[0, 1\)'): prune_model(m, 'l1_unstructured', bad)
    assert state_hash(m) == before and P.pruned_parameters(m) == []


def test_bad_method_and_model():
    m = build_model('cnn', 10, (1, 8, 8), seed=0)
    with pytest.raises(ValueError, match='l1_unstructured, l1_structured, l2_structured, slimming, global_unstructured, imp'):
        prune_model(m, 'random', 0.5)
    mlp = build_model('mlp', 10, (64,), seed=0)
    with pytest.raises(ValueError, match='no Conv2d'): prune_model(mlp, 'l1_structured', 0.5)
    with pytest.raises(ValueError, match='no affine BatchNorm'): prune_model(mlp, 'slimming', 0.5)
    with pytest.raises(ValueError, match='affine BatchNorm'): slimming_penalty(mlp)
    assert P.pruned_parameters(mlp) == []
    prune_model(mlp, 'l1_unstructured', 0.5)   # unstructured methods do apply to Linear-only models
    assert abs(sparsity_report(mlp, 'l1_unstructured', 0.5)['measured'] - 0.5) <= 0.02


def test_count_convention():
    assert (prune_count(2304, 0.7), P.torch_prune_count(2304, 0.7)) == (1612, 1613)
    assert prune_count(100, 0.29) == 29 and int(100 * 0.29) == 28


def test_state_hash():
    a, b = build_model('cnn', 10, (1, 8, 8), seed=0), build_model('cnn', 10, (1, 8, 8), seed=0)
    assert state_hash(a) == state_hash(b) == state_hash(a.state_dict())
    with torch.no_grad(): b.classifier[-1].bias[0] += 1e-7
    assert state_hash(a) != state_hash(b)


def test_structured_bn_keep_is_the_default_and_zero_removes():
    "l1_structured at 0.5: the following BatchNorm's beta stays by default ('keep'), and is zero with 'zero'."
    assert STRUCTURED_BN == ('keep', 'zero')
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    out = {}
    for sb in (None, 'keep', 'zero'):
        m = trained_looking('cnn')
        beta0 = m.features[0][1].bias.detach().clone()
        prune_model(m, 'l1_structured', 0.5, **({} if sb is None else {'structured_bn': sb}))
        conv, bn = m.features[0][0], m.features[0][1]
        dead = ~current_mask(conv, 'weight').flatten(1).any(1)
        assert int(dead.sum()) == 16 and bool((effective_param(conv, 'weight')[dead] == 0).all())
        if sb == 'zero':
            assert bool((bn.weight[dead] == 0).all() and (bn.bias[dead] == 0).all())
        else:
            assert torch.equal(bn.bias.detach(), beta0) and bool((bn.bias[dead] != 0).all())
        with torch.no_grad(): out[sb] = m(x)
    assert torch.equal(out[None], out['keep']) and not torch.allclose(out['keep'], out['zero'])
    for sb in ('remove', None, 0, 'Keep'):
        with pytest.raises(ValueError, match="structured_bn must be 'keep'.*'zero'"):
            prune_model(build_model('cnn', 10, (1, 8, 8)), 'l1_structured', 0.5, structured_bn=sb)
    # the other methods accept and ignore it; slimming always zeroes gamma and beta (its unit)
    a, b = trained_looking('cnn'), trained_looking('cnn')
    prune_model(a, 'slimming', 0.5); prune_model(b, 'slimming', 0.5, structured_bn='zero')
    assert state_hash(a) == state_hash(b)
    bn = a.features[0][1]
    assert bool((bn.bias[~current_mask(bn, 'weight')] == 0).all())


def test_check_model_for_is_public():
    with pytest.raises(ValueError, match='no Conv2d'): check_model_for(build_model('mlp', 10, (64,)), 'l1_structured')
    check_model_for(build_model('cnn', 10, (1, 8, 8)), 'slimming')
    with pytest.raises(ValueError, match='prune method'): check_model_for(build_model('cnn', 10, (1, 8, 8)), 'nope')
