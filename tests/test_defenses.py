"Defenses: PPB's loss against independent computations, adversarial regularisation, DP-SGD's accounting and masks, bad input."
import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mia_pruning.core import ArtifactCache
from mia_pruning.data import load_dataset, make_splits
from mia_pruning.models import build_model
from mia_pruning.prune import prune_model, fine_tune, pruned_parameters, current_mask, state_hash, clone_model
from mia_pruning.pruned import pruned_model, save_pruned, load_pruned
from mia_pruning.train import TrainConfig, train_model
from mia_pruning.defenses import (DEFENSES, ppb_loss, make_defense, defended_fine_tune, DPTraining,
                                  dp_fine_tune, build_defended_model, AdvRegObjective,
                                  LabelSmoothingObjective, PPBObjective)
from mia_pruning.report import tradeoff_table, plot_frontier


@pytest.fixture(scope='module')
def digits():
    ds = load_dataset('digits')
    return ds, make_splits(len(ds), seed=7, num_shadows=1).victim


@pytest.fixture(scope='module')
def pruned_mlp(digits):
    ds, sp = digits
    m = build_model('mlp', 10, ds.input_shape, seed=0)
    train_model(m, ds, sp.train, sp.dev, TrainConfig(epochs=3), seed=0, device='cpu', progress=False)
    return prune_model(m, 'l1_unstructured', 0.9)


def masks(model):
    return {k: current_mask(model.get_submodule(k[0]), k[1]).clone() for k in pruned_parameters(model)}


# ---------------------------------------------------------------- PPB
def kl_reference(logits, lam):
    "PPB written out with numpy in float64, row by row."
    z = np.sort(logits.detach().double().numpy(), axis=1)[:, ::-1]
    h = len(z) // 2
    sm = lambda v: np.exp(v - v.max()) / np.exp(v - v.max()).sum()
    kls = [np.sum(sm(z[h + i]) * np.log(sm(z[h + i]) / sm(z[i]))) for i in range(h)]
    return lam * float(np.mean(kls))


@pytest.mark.parametrize('B', [2, 5, 8, 33])
def test_ppb_matches_independent_computation(B):
    z = torch.randn(B, 7, generator=torch.Generator().manual_seed(B)) * 3
    assert ppb_loss(z, 2.5).item() == pytest.approx(kl_reference(z, 2.5), rel=1e-5, abs=1e-7)


def test_ppb_zero_when_halves_have_identical_sorted_posteriors():
    g = torch.Generator().manual_seed(0)
    first = torch.randn(16, 10, generator=g) * 4
    second = torch.stack([row[torch.randperm(10, generator=g)] for row in first])  # other classes, same shape
    z = torch.cat([first, second])
    assert abs(ppb_loss(z, 4.0).item()) < 1e-6
    z2 = torch.cat([first, second * 0.5])  # flatter posteriors in the second half: KL > 0
    assert ppb_loss(z2, 4.0).item() > 1e-3


def test_ppb_odd_batches_drop_the_last_row_and_single_rows_give_zero():
    z = torch.randn(7, 5, generator=torch.Generator().manual_seed(1), requires_grad=True)
    loss = ppb_loss(z, 1.0)
    assert loss.item() == pytest.approx(ppb_loss(z[:6].detach(), 1.0).item(), abs=1e-7)
    loss.backward()
    assert z.grad[6].abs().sum().item() == 0          # the unpaired row is not used
    assert z.grad[:3].abs().sum().item() > 0 and z.grad[3:6].abs().sum().item() > 0  # both halves get gradients
    one = torch.randn(1, 5, requires_grad=True)
    l1 = ppb_loss(one, 4.0)
    assert l1.item() == 0.0 and l1.requires_grad


def test_ppb_linear_in_lambda_and_scalar():
    z = torch.randn(10, 4, generator=torch.Generator().manual_seed(2))
    a, b = ppb_loss(z, 1.0), ppb_loss(z, 8.0)
    assert a.ndim == 0 and b.item() == pytest.approx(8 * a.item(), rel=1e-6)
    assert ppb_loss(z, 0.0).item() == 0.0
    y = torch.zeros(10, dtype=torch.long)
    assert PPBObjective(8.0)(None, None, y, z).item() == pytest.approx(F.cross_entropy(z, y).item() + b.item(), rel=1e-6)


def test_label_smoothing_objective_against_the_formula():
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(3)); y = torch.tensor([0, 1, 2, 3, 0, 1])
    s = 0.3
    target = (1 - s) * F.one_hot(y, 4) + s / 4
    want = -(target * F.log_softmax(z, 1)).sum(1).mean().item()
    assert LabelSmoothingObjective(s)(None, None, y, z).item() == pytest.approx(want, rel=1e-6)
    assert LabelSmoothingObjective(0.0)(None, None, y, z).item() == pytest.approx(F.cross_entropy(z, y).item(), rel=1e-6)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize('name,param,needle', [
    ('ppb', -0.5, 'ppb lambda'), ('ppb', float('inf'), 'finite'), ('ppb', True, 'finite real number'),
    ('advreg', -2.0, 'advreg theta'), ('dpsgd', -1.5, 'noise_multiplier'), ('dpsgd', 0.0, 'noise_multiplier'),
    ('label_smoothing', 1.0, '[0, 1)'), ('label_smoothing', -0.1, '[0, 1)'), ('none', 2.0, 'takes no parameter')])
def test_bad_parameters_are_refused(name, param, needle):
    with pytest.raises(ValueError, match=None) as e: make_defense(name, param)
    assert needle in str(e.value)


def test_unknown_defense_lists_the_registry():
    with pytest.raises(ValueError) as e: make_defense('dropout')
    assert all(n in str(e.value) for n in DEFENSES) and 'dropout' in str(e.value)
    assert list(DEFENSES) == ['none', 'ppb', 'advreg', 'dpsgd', 'label_smoothing']


def test_bad_options_and_defaults():
    with pytest.raises(ValueError, match='unknown option'): make_defense('ppb', 4, k=3)
    with pytest.raises(ValueError, match='integer >= 1'): make_defense('advreg', 1, k=0)
    with pytest.raises(ValueError, match='accountant'): make_defense('dpsgd', 1, accountant='moments')
    assert make_defense('ppb').param == 4.0 and make_defense('ppb', -1.0).param == 4.0   # the pipeline's sentinel
    assert make_defense('label_smoothing').param == 0.1 and make_defense('none').param is None
    with pytest.raises(ValueError, match='no objective'): make_defense('dpsgd').objective
    with pytest.raises(ValueError, match='needs its data'): make_defense('advreg').objective


def test_bad_input_fails_before_training(digits, pruned_mlp):
    ds, sp = digits
    m = copy.deepcopy(pruned_mlp); before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match='ppb lambda'):
        defended_fine_tune(m, ds, sp, 'ppb', -3.0, cfg=TrainConfig(epochs=2), device='cpu')
    with pytest.raises(ValueError, match='known'):
        defended_fine_tune(m, ds, sp, 'mixupp', cfg=TrainConfig(epochs=2), device='cpu')
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


class BatchCenter(nn.Module):
    def forward(self, x): return x - x.mean(0, keepdim=True)


def test_dpsgd_refuses_a_model_whose_layers_mix_samples(digits):
    ds, sp = digits
    mixing = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), BatchCenter(), nn.ReLU(), nn.Linear(16, 10))
    before = [p.clone() for p in mixing.parameters()]
    with pytest.raises(ValueError, match='mixes samples'):
        defended_fine_tune(mixing, ds, sp, 'dpsgd', 1.0, cfg=TrainConfig(epochs=2), device='cpu')
    assert all(torch.equal(a, b) for a, b in zip(before, mixing.parameters()))


# ---------------------------------------------------------------- fine-tuning paths
def test_none_is_exactly_plain_fine_tuning_and_ppb_differs(digits, pruned_mlp):
    ds, sp = digits
    cfg = TrainConfig(epochs=4, max_batches=2, patience=0)
    a, _ = defended_fine_tune(copy.deepcopy(pruned_mlp), ds, sp, 'none', cfg=cfg, seed=3, device='cpu', progress=False)
    b = fine_tune(copy.deepcopy(pruned_mlp), ds, sp, cfg, seed=3, device='cpu', progress=False).model
    c, info = defended_fine_tune(copy.deepcopy(pruned_mlp), ds, sp, 'ppb', cfg=cfg, seed=3, device='cpu', progress=False)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()): assert torch.equal(va, vb), k
    assert any(not torch.equal(va, vc) for va, vc in zip(a.state_dict().values(), c.state_dict().values()))
    assert info['defense_key'] == {'defense': 'ppb', 'param': 4.0}
    mk = masks(pruned_mlp)
    assert all(torch.equal(masks(c)[k], v) for k, v in mk.items())


def test_advreg_trains_its_inference_model_and_changes_the_loss(digits, pruned_mlp):
    ds, sp = digits
    net = copy.deepcopy(pruned_mlp)
    obj = AdvRegObjective(2.0, ds, sp.train, sp.dev, k=3, seed=0)
    obj.on_epoch_start(net, 0)
    h0 = [p.clone() for p in obj.h.parameters()]
    x, y = ds.x[sp.train[:64]], ds.y[sp.train[:64]]
    logits = net(x)
    loss = obj(net, x, y, logits)
    assert obj._stats['steps'] == 3                                      # k inference-model steps per target step
    assert any(not torch.equal(a, b) for a, b in zip(h0, obj.h.parameters()))
    ce = F.cross_entropy(logits, y)
    assert loss.item() < ce.item()                                       # + theta * log h(...) with log h < 0
    zero = AdvRegObjective(0.0, ds, sp.train, sp.dev, seed=0)
    assert zero(net, x, y, logits).item() == pytest.approx(ce.item(), rel=1e-6)
    h_grads = [p.grad.clone() for p in obj.h.parameters()]              # left by h's own last step
    loss.backward()                                                      # the target's loss does not train h
    assert all(torch.equal(a, p.grad) for a, p in zip(h_grads, obj.h.parameters()))
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    net2, info = defended_fine_tune(copy.deepcopy(pruned_mlp), ds, sp, 'advreg', 1.0, cfg=TrainConfig(epochs=4, max_batches=3),
                                    device='cpu', progress=False, k=2)
    hist = info['advreg_history']
    assert len(hist) == len(info['history']) and all(0 <= r['h_acc'] <= 1 for r in hist)
    assert all(torch.equal(masks(net2)[k], v) for k, v in masks(pruned_mlp).items())


def test_advreg_gain_gradient_pushes_members_towards_non_member_looking(digits, pruned_mlp):
    "The target's extra gradient lowers h's member score: one step along it decreases mean log h on the batch."
    ds, sp = digits
    net = copy.deepcopy(pruned_mlp)
    obj = AdvRegObjective(1.0, ds, sp.train, sp.dev, k=5, seed=1)
    obj.on_epoch_start(net, 0)
    x, y = ds.x[sp.train[:128]], ds.y[sp.train[:128]]
    obj._h_steps(net, 128, torch.device('cpu'))
    gain = lambda: F.logsigmoid(obj.h(obj._features(torch.softmax(net(x), 1), y))[:, 0]).mean()
    g0 = gain()
    net.zero_grad(); g0.backward()
    with torch.no_grad():
        for p in net.parameters():
            if p.grad is not None: p -= 0.05 * p.grad
    assert gain().item() < g0.item()


# ---------------------------------------------------------------- DP-SGD
def test_dpsgd_epsilon_finite_monotone_and_matches_the_accountant(digits, pruned_mlp):
    from opacus.accountants import RDPAccountant
    ds, sp = digits
    eps = {}
    for nm in (0.7, 1.0, 2.0):
        net, info = dp_fine_tune(pruned_mlp, ds, sp, TrainConfig(epochs=2), seed=0, device='cpu', noise_multiplier=nm, progress=False)
        eps[nm] = info['epsilon']
        assert math.isfinite(info['epsilon']) and info['epsilon'] > 0
        assert info['delta'] == pytest.approx(1 / len(sp.train))
    assert eps[0.7] > eps[1.0] > eps[2.0]
    acc = RDPAccountant()
    for _ in range(info['steps']): acc.step(noise_multiplier=2.0, sample_rate=info['sample_rate'])
    assert info['epsilon'] == pytest.approx(acc.get_epsilon(1 / len(sp.train)), rel=1e-9)
    assert info['sample_rate'] == pytest.approx(1 / math.ceil(len(sp.train) / 128))


def test_dpsgd_keeps_masks_and_leaves_the_input_alone(digits, pruned_mlp):
    ds, sp = digits
    before = {k: v.clone() for k, v in pruned_mlp.state_dict().items()}
    net, info = defended_fine_tune(pruned_mlp, ds, sp, 'dpsgd', 1.0, cfg=TrainConfig(epochs=2), device='cpu', progress=False)
    assert net is not pruned_mlp
    assert all(torch.equal(before[k], v) for k, v in pruned_mlp.state_dict().items())
    mk = masks(pruned_mlp)
    assert set(masks(net)) == set(mk) and all(torch.equal(masks(net)[k], v) for k, v in mk.items())
    for (mn, pn), keep in mk.items():       # the trained values behind the mask stayed exactly zero
        assert net.get_submodule(mn)._parameters[f'{pn}_orig'][~keep].abs().sum().item() == 0
    assert any(not torch.equal(before[k], v) for k, v in net.state_dict().items() if k in before)   # it did train
    assert info['defense'] == 'dpsgd' and info['defense_param'] == 1.0 and info['architecture'] == 'unchanged'


def test_dpsgd_batchnorm_model_round_trips_through_save_and_load(digits, tmp_path):
    ds, sp = digits
    cnn = prune_model(build_model('cnn', 10, ds.input_shape, seed=0), 'l1_unstructured', 0.5)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in cnn.modules())
    net, info = defended_fine_tune(cnn, ds, sp, 'dpsgd', 2.0, cfg=TrainConfig(epochs=2, max_batches=2), device='cpu', progress=False)
    assert info['architecture'] == 'groupnorm'
    assert sum(isinstance(m, nn.GroupNorm) for m in net.modules()) == n_bn and not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in cnn.modules()) == n_bn   # input untouched
    save_pruned(tmp_path / 'dp.pt', net, {'defense': info['defense_key']})
    back, meta = load_pruned(tmp_path / 'dp.pt', 'cnn', 10, ds.input_shape, defense='dpsgd')
    x = ds.x[:20]
    with torch.no_grad(): assert torch.allclose(back(x), net.eval()(x), atol=1e-6)
    fresh = build_defended_model('cnn', 10, ds.input_shape, 'dpsgd')
    assert set(fresh.state_dict()) == set(back.state_dict())


def test_pruned_model_caches_dpsgd_and_shares_plain_entries(digits, tmp_path):
    ds, sp = digits
    dense = build_model('mlp', 10, ds.input_shape, seed=1)
    train_model(dense, ds, sp.train, sp.dev, TrainConfig(epochs=2), seed=0, device='cpu', progress=False)
    kw = dict(cfg=TrainConfig(epochs=2, max_batches=2), cache=ArtifactCache(tmp_path), device='cpu', progress=False)
    m1, i1 = pruned_model(dense, ds, sp, 'mlp', 'l1_unstructured', 0.8, defense=make_defense('dpsgd', 1.0), **kw)
    m2, i2 = pruned_model(dense, ds, sp, 'mlp', 'l1_unstructured', 0.8, defense=make_defense('dpsgd', 1.0), **kw)
    assert (i1['cache_hit'], i2['cache_hit']) == (False, True) and i1['epsilon'] == i2['epsilon']
    assert state_hash(m1) == state_hash(m2) and i1['defense_name'] == 'dpsgd'
    _, i3 = pruned_model(dense, ds, sp, 'mlp', 'l1_unstructured', 0.8, defense=make_defense('dpsgd', 3.0), **kw)
    assert not i3['cache_hit'] and i3['epsilon'] < i1['epsilon']
    _, i4 = pruned_model(dense, ds, sp, 'mlp', 'l1_unstructured', 0.8, defense=make_defense('none'), **kw)
    _, i5 = pruned_model(dense, ds, sp, 'mlp', 'l1_unstructured', 0.8, **kw)
    assert i5['cache_hit'] and i4['cache_entry'] == i5['cache_entry'] and i5['defense'] == 'none'
    with pytest.raises(ValueError, match='imp'):
        pruned_model(dense, ds, sp, 'mlp', 'imp', 0.8, defense='dpsgd', **kw)


def test_dp_goes_through_the_one_training_loop(digits, pruned_mlp, monkeypatch):
    "dp_fine_tune hands DPTraining hooks to train.train_model: no second loop."
    import mia_pruning.train as T
    ds, sp = digits
    seen, real = [], T.train_model
    def spy(*a, **k):
        seen.append(type(k.get('hooks')).__name__)
        return real(*a, **k)
    monkeypatch.setattr('mia_pruning.prune.train_model', spy)
    evaluated = clone_model(pruned_mlp).eval()                   # as models come out of the cache
    net, info = dp_fine_tune(evaluated, ds, sp, TrainConfig(epochs=2, max_batches=2), seed=0, device='cpu', progress=False)
    assert seen == ['DPTraining']
    assert [h['steps'] for h in info['history']] == [2]          # the hooks' record, in the loop's history
    assert info['steps'] == 2


# ---------------------------------------------------------------- trade-off
def test_tradeoff_table_known_answer_and_figure(tmp_path):
    rows = []
    for defense, p, seed, acc, attacks in [('none', np.nan, 0, 0.9, {'a': 0.7, 'b': 0.6}), ('none', np.nan, 1, 0.8, {'a': 0.6, 'b': 0.65}),
                                           ('ppb', 4.0, 0, 0.85, {'a': 0.55, 'b': 0.52}), ('ppb', 4.0, 1, 0.75, {'a': 0.51, 'b': 0.53})]:
        for a, v in attacks.items():
            rows.append(dict(defense=defense, defense_param=p, seed=seed, test_acc=acc, measured_sparsity=0.9, attack=a,
                             attack_acc=v, auc=v + 0.1, tpr_at_0_1pct_fpr=v / 100, model_state='pruned'))
    rows.append(dict(rows[0], model_state='dense', attack_acc=0.99))    # dense rows are ignored
    t = tradeoff_table(pd.DataFrame(rows))
    assert list(t.defense) == ['none', 'ppb']
    none, ppb = t.iloc[0], t.iloc[1]
    assert none.attack_acc == pytest.approx((0.7 + 0.65) / 2) and ppb.attack_acc == pytest.approx((0.55 + 0.53) / 2)
    assert ppb.auc == pytest.approx((0.65 + 0.63) / 2)
    assert ppb.test_acc_change == pytest.approx(-0.05) and ppb.attack_acc_change == pytest.approx(0.54 - 0.675)
    assert ppb.attack_acc_std == pytest.approx(np.std([0.55, 0.53], ddof=1)) and ppb.n_seeds == 2
    assert none.best_attack == 'a'
    fig = plot_frontier(pd.DataFrame(rows), path=tmp_path / 'f.png')
    assert len(fig.axes) == 3 and (tmp_path / 'f.png').stat().st_size > 0
    assert [p.name for p in tmp_path.iterdir()] == ['f.png']
    with pytest.raises(ValueError, match='auc'): tradeoff_table(pd.DataFrame(rows).drop(columns=['auc']))
