"Tests of mia_pruning.features: model queries, loss/confidence maths, sensitivity and AttackData."
import copy
from types import SimpleNamespace
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mia_pruning.features import (AttackData, attack_data_for, logit_scaled_confidence, model_outputs, per_sample_loss,
                                  posteriors, sensitivity, sensitivity_noise, true_class_prob)


@pytest.fixture(scope='module')
def toy():
    g = torch.Generator().manual_seed(0)
    ds = SimpleNamespace(x=torch.randn(40, 2, 3, generator=g), y=torch.randint(0, 4, (40,), generator=g))
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Dropout(0.5),
                              torch.nn.Linear(12, 4))
    return ds, net


def test_model_outputs_eval_mode_no_grad(toy):
    ds, net = toy
    net.train()
    z = model_outputs(net, ds, np.arange(7), device='cpu', batch_size=3)
    assert z.shape == (7, 4) and z.dtype == torch.float32 and not z.requires_grad
    assert net.training  # restored
    net.eval()
    with torch.no_grad(): ref = net(ds.x[:7])
    assert torch.allclose(z, ref, atol=1e-6)  # eval mode: dropout off, so it is deterministic
    with pytest.raises(ValueError, match='outside'): model_outputs(net, ds, [40], device='cpu')
    with pytest.raises(ValueError, match='1-D'): model_outputs(net, ds, np.zeros((2, 2), int), device='cpu')


def test_posteriors_loss_lsc():
    z = torch.tensor([[1.0, 2.0, 0.5], [100.0, -100.0, 0.0], [-30.0, 0.0, 30.0]])
    y = torch.tensor([1, 0, 0])
    p = posteriors(z)
    np.testing.assert_allclose(p.sum(1), 1, atol=1e-12)
    np.testing.assert_allclose(per_sample_loss(z, y), F.cross_entropy(z.double(), y, reduction='none').numpy(), atol=1e-12)
    lsc = logit_scaled_confidence(z, y)
    assert np.isfinite(lsc).all()
    np.testing.assert_allclose(lsc[0], np.log(p[0, 1]) - np.log(1 - p[0, 1]), rtol=1e-10)
    np.testing.assert_allclose(lsc[1], 100 - np.logaddexp(-100, 0), rtol=1e-12)  # p_y == 1.0 in float64
    np.testing.assert_allclose(lsc[2], -30 - np.logaddexp(0, 30), rtol=1e-12)    # p_y underflows towards 0
    assert per_sample_loss(z, y)[2] == pytest.approx(60.0, rel=1e-9)
    np.testing.assert_allclose(true_class_prob(p, y), p[[0, 1, 2], [1, 0, 0]])
    with pytest.raises(ValueError, match=r'\[0, 3\)'): per_sample_loss(z, [0, 1, 3])
    with pytest.raises(ValueError, match='finite'): posteriors(torch.tensor([[0.0, float('nan')]]))


def _slow_sensitivity(model, ds, idx, m, eps, seed):
    "The definition, one sample and one draw at a time, with the noise `sensitivity` uses."
    u = sensitivity_noise(idx, m, ds.x.shape[1:], seed)
    out = []
    with torch.no_grad():
        for k, i in enumerate(idx):
            x = ds.x[i:i + 1].to(next(model.parameters()).dtype)
            p = torch.softmax(model(x).double(), 1)[0]
            d = [(torch.softmax(model(x + eps * u[k, j].to(x.dtype)).double(), 1)[0] - p).abs() / eps for j in range(m)]
            out.append(torch.stack(d).mean(0).numpy())
    return np.stack(out)


def test_sensitivity_matches_per_sample_definition(toy):
    ds, net = toy
    net.eval()
    idx = np.array([5, 0, 33, 12, 7, 21, 2])
    # float64: the batched computation equals the definition to rounding
    s64 = sensitivity(net, ds, idx, m=5, eps=1e-3, seed=4, device='cpu', batch_size=3, precision='float64')
    ref64 = _slow_sensitivity(copy.deepcopy(net).double(), ds, idx, 5, 1e-3, 4)
    np.testing.assert_allclose(s64, ref64, rtol=1e-7, atol=1e-9)
    # float32 model: close to the float64 truth (softmax differences are taken in float64)
    s32 = sensitivity(net, ds, idx, m=5, eps=1e-3, seed=4, device='cpu', batch_size=3)
    assert s32.shape == (7, 4) and s32.dtype == np.float64 and (s32 >= 0).all()
    np.testing.assert_allclose(s32, s64, rtol=2e-2, atol=2e-3)
    # batch size, order and companions do not change a sample's value; the seed does
    np.testing.assert_allclose(sensitivity(net, ds, idx[::-1], m=5, seed=4, device='cpu', batch_size=100, precision='float64'),
                               s64[::-1], rtol=1e-9, atol=1e-12)
    assert not np.allclose(sensitivity(net, ds, idx, m=5, seed=5, device='cpu', precision='float64'), s64)


def test_sensitivity_known_values(toy):
    ds, _ = toy
    const = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 3))
    with torch.no_grad(): const[1].weight.zero_()
    assert np.all(sensitivity(const, ds, np.arange(10), m=3, device='cpu') == 0)  # output ignores the input
    # linear 2-class model with logit difference w.x: s_c ~ p0 p1 E|w.u| = p0 p1 |w| sqrt(2/pi) for small eps
    lin = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 2)).double()
    with torch.no_grad():
        lin[1].weight.copy_(torch.tensor([[0.5, -1.0, 0.2, 0.0, 0.3, 1.0], [0.0] * 6])); lin[1].bias.zero_()
    s = sensitivity(lin, ds, np.arange(20), m=4000, eps=1e-4, device='cpu', precision='float64', batch_size=5)
    p = torch.softmax(lin(ds.x[:20].double()), 1).detach().numpy()
    w = np.linalg.norm([0.5, -1.0, 0.2, 0.0, 0.3, 1.0])
    expected = p[:, 0] * p[:, 1] * w * np.sqrt(2 / np.pi)
    np.testing.assert_allclose(s[:, 0], expected, rtol=0.06)
    np.testing.assert_allclose(s[:, 1], s[:, 0], rtol=1e-6)  # two classes move by the same amount


def test_sensitivity_bad_input(toy):
    ds, net = toy
    with pytest.raises(ValueError, match='m must'): sensitivity(net, ds, [0], m=0, device='cpu')
    with pytest.raises(ValueError, match='eps must'): sensitivity(net, ds, [0], eps=0.0, device='cpu')
    with pytest.raises(ValueError, match="'float32', 'float64'"): sensitivity(net, ds, [0], precision='half', device='cpu')
    with pytest.raises(ValueError, match='empty'): sensitivity(net, ds, [], device='cpu')


def _ad(n=6, C=3, seed=0, **kw):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(C), n)
    return AttackData(probs=p, labels=rng.integers(0, C, n), is_member=np.arange(n) % 2 == 0, **kw)


def test_attack_data_validation():
    ad = _ad()
    assert len(ad) == 6 and ad.num_classes == 3 and ad.num_refs == 0 and ad.num_groups == 1
    np.testing.assert_allclose(ad.loss, -np.log(ad.py))
    np.testing.assert_allclose(ad.lsc, np.log(ad.py) - np.log1p(-ad.py))
    p, y, m = ad.probs, ad.labels, ad.is_member
    cases = [(dict(probs=p[:5], labels=y, is_member=m), 'shape'),
             (dict(probs=p, labels=y, is_member=m[:5]), 'shape'),
             (dict(probs=np.where(p > 0.5, np.nan, p), labels=y, is_member=m), 'NaN'),
             (dict(probs=np.where(p > 0.5, np.inf, p), labels=y, is_member=m), 'infinite'),
             (dict(probs=p * 1.01, labels=y, is_member=m), 'sum to 1'),
             (dict(probs=np.log(p), labels=y, is_member=m), 'not logits'),
             (dict(probs=p, labels=y + 3, is_member=m), r'\[0, 3\)'),
             (dict(probs=p, labels=y.astype(float), is_member=m), 'integers'),
             (dict(probs=p, labels=y, is_member=np.full(6, 2)), 'boolean'),
             (dict(probs=p, labels=y, is_member=m, sensitivity=np.ones((6, 2))), 'sensitivity must have shape'),
             (dict(probs=p, labels=y, is_member=m, sensitivity=-np.ones((6, 3))), '>= 0'),
             (dict(probs=p, labels=y, is_member=m, ref_lsc=np.zeros((6, 2))), 'ref_in'),
             (dict(probs=p, labels=y, is_member=m, ref_lsc=np.zeros((6, 2)), ref_in=np.zeros((6, 3), bool)), 'shape of ref_in'),
             (dict(probs=p, labels=y, is_member=m, ref_py=np.zeros((6, 2)), ref_in=np.zeros((6, 2), bool),
                   pop_py=np.ones((1, 4)) / 2, pop_ref_py=np.ones((1, 4, 3)) / 2), 'pop_ref_py must have shape'),
             (dict(probs=p, labels=y, is_member=m, pop_py=np.ones((1, 4)) / 2, group=np.full(6, 1)), 'group ids')]
    for kw, msg in cases:
        with pytest.raises(ValueError, match=msg): AttackData(**kw)
    # tolerance: float32 posteriors are accepted
    AttackData(probs=p.astype(np.float32), labels=y, is_member=m.astype(int))


def test_concat_and_subset():
    a = _ad(6, ref_py=np.full((6, 2), .3), ref_in=np.zeros((6, 2), bool), pop_py=np.full((1, 5), .4),
            pop_ref_py=np.full((1, 5, 2), .5))
    b = _ad(4, seed=1, ref_py=np.full((4, 2), .3), ref_in=np.ones((4, 2), bool), pop_py=np.full((1, 5), .6),
            pop_ref_py=np.full((1, 5, 2), .5))
    c = AttackData.concat([a, b])
    assert len(c) == 10 and c.num_groups == 2 and c.group.tolist() == [0] * 6 + [1] * 4
    np.testing.assert_array_equal(c.pop_py[c.group[7]], b.pop_py[0])
    np.testing.assert_array_equal(c.probs[6:], b.probs)
    cc = AttackData.concat([c, a])  # groups keep counting
    assert cc.num_groups == 3 and cc.group.max() == 2
    s = c.subset(c.is_member)
    assert s.is_member.all() and len(s) == int(c.is_member.sum()) and s.pop_py.shape == (2, 5)
    np.testing.assert_array_equal(c.subset(np.array([7, 0])).ref_in[:, 0], [True, False])
    with pytest.raises(ValueError, match='only some parts have ref_py'): AttackData.concat([a, _ad(4)])
    with pytest.raises(ValueError, match='different numbers of reference'):
        AttackData.concat([_ad(4, ref_py=np.full((4, 2), .3), ref_in=np.zeros((4, 2), bool)),
                           _ad(4, ref_py=np.full((4, 1), .3), ref_in=np.zeros((4, 1), bool))])
    with pytest.raises(ValueError, match='different population sizes'):
        AttackData.concat([_ad(4, pop_py=np.full((1, 5), .4)), _ad(4, pop_py=np.full((1, 6), .4))])
    with pytest.raises(ValueError, match='only some parts have sensitivity'):
        AttackData.concat([_ad(4, sensitivity=np.ones((4, 3))), _ad(4)])
    with pytest.raises(ValueError, match='different numbers of classes'): AttackData.concat([_ad(4), _ad(4, C=5)])
    with pytest.raises(ValueError, match='boolean mask'): c.subset(np.ones(3, bool))


def test_attack_data_for(toy):
    ds, net = toy
    net.eval()
    refs = [copy.deepcopy(net) for _ in range(3)]
    for k, r in enumerate(refs):
        with torch.no_grad(): r[-1].bias += 0.2 * k
    rin = np.zeros((5, 3), bool); rin[:2, 0] = True
    ad = attack_data_for(net, ds, [1, 2], [10, 11, 12], m=3, eps=1e-3, reference_models=refs, ref_in=rin,
                         population_idx=[30, 31, 32, 33], seed=2, device='cpu')
    assert ad.is_member.tolist() == [True, True, False, False, False]
    assert ad.index.tolist() == [1, 2, 10, 11, 12] and ad.labels.tolist() == ds.y[[1, 2, 10, 11, 12]].tolist()
    z = model_outputs(net, ds, ad.index, 'cpu')
    np.testing.assert_allclose(ad.probs, posteriors(z)); np.testing.assert_allclose(ad.loss, per_sample_loss(z, ad.labels))
    np.testing.assert_allclose(ad.sensitivity, sensitivity(net, ds, ad.index, m=3, seed=2, device='cpu'))
    zr = model_outputs(refs[2], ds, ad.index, 'cpu')
    np.testing.assert_allclose(ad.ref_lsc[:, 2], logit_scaled_confidence(zr, ad.labels))
    np.testing.assert_allclose(ad.ref_py[:, 2], true_class_prob(posteriors(zr), ad.labels))
    assert ad.pop_py.shape == (1, 4) and ad.pop_ref_py.shape == (1, 4, 3)
    zp = model_outputs(refs[1], ds, [30, 31, 32, 33], 'cpu')
    np.testing.assert_allclose(ad.pop_ref_py[0, :, 1], true_class_prob(posteriors(zp), ds.y[30:34]))
    assert attack_data_for(net, ds, [1], [2], with_sensitivity=False, device='cpu').sensitivity is None
    with pytest.raises(ValueError, match='both members and non-members'): attack_data_for(net, ds, [1, 2], [2, 3], device='cpu')
    with pytest.raises(ValueError, match='ref_in'): attack_data_for(net, ds, [1], [2], reference_models=refs, device='cpu')
    with pytest.raises(ValueError, match=r'shape \(2, 3\)'):
        attack_data_for(net, ds, [1], [2], reference_models=refs, ref_in=np.zeros((3, 3), bool), device='cpu')
    with pytest.raises(ValueError, match='members of the target'): attack_data_for(net, ds, [1], [2], population_idx=[1], device='cpu')
    with pytest.raises(ValueError, match='need both'): attack_data_for(net, ds, [], [2], device='cpu')


def test_inputs_and_population_labels(toy):
    "QMIA's records: the flattened input per sample, and the population's labels and inputs, validated and pooled."
    ds, net = toy
    ad = attack_data_for(net, ds, [1, 2], [10, 11], population_idx=[30, 31, 32], with_sensitivity=False, with_inputs=True,
                         device='cpu')
    np.testing.assert_array_equal(ad.inputs, ds.x[[1, 2, 10, 11]].reshape(4, -1).numpy())
    assert ad.inputs.dtype == np.float32 and ad.pop_inputs.shape == (1, 3, 6)
    np.testing.assert_array_equal(ad.pop_labels, ds.y[[30, 31, 32]].numpy()[None])
    np.testing.assert_array_equal(ad.pop_inputs[0], ds.x[[30, 31, 32]].reshape(3, -1).numpy())
    plain = attack_data_for(net, ds, [1, 2], [10, 11], population_idx=[30, 31, 32], with_sensitivity=False, device='cpu')
    assert plain.inputs is None and plain.pop_inputs is None and plain.pop_labels is not None
    both = AttackData.concat([ad, ad])
    assert both.inputs.shape == (8, 6) and both.pop_labels.shape == (2, 3) and both.pop_inputs.shape == (2, 3, 6)
    assert ad.subset(np.array([0, 3])).inputs.shape == (2, 6)
    with pytest.raises(ValueError, match='only some parts have inputs'): AttackData.concat([ad, plain])
    base = dict(probs=ad.probs, labels=ad.labels, is_member=ad.is_member)
    with pytest.raises(ValueError, match=r'inputs must have shape \(4, d\)'): AttackData(**base, inputs=np.zeros((3, 6)))
    with pytest.raises(ValueError, match='need pop_py'): AttackData(**base, pop_labels=np.zeros((1, 3), int))
    with pytest.raises(ValueError, match='pop_labels must lie in'):
        AttackData(**base, pop_py=np.full((1, 3), 0.5), pop_labels=np.full((1, 3), 9))
    with pytest.raises(ValueError, match='features per sample'):
        AttackData(**base, inputs=np.zeros((4, 6)), pop_py=np.full((1, 3), 0.5), pop_inputs=np.zeros((1, 3, 5)))
