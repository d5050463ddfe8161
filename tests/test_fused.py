"Known-answer tests of fused training (mia_pruning.fused): M=1 equals train_model, own batches, frozen early stoppers, BN per model."
import math
import numpy as np
import pytest
import torch
from torch import nn
from mia_pruning.data import MIADataset
from mia_pruning.models import build_model
from mia_pruning.train import TrainConfig, train_model, dense_key
from mia_pruning.fused import dense_models
from mia_pruning.core import ArtifactCache
from mia_pruning.fused import train_models_fused, fuse_models, split_state, pack_inputs, unpack_logits, use_fused

def _blobs(n=240, d=4, seed=0):
    "Two classes of 4-d points, separable along the first axis."
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(2, (n,), generator=g)
    x = torch.randn(n, d, generator=g) * 0.3
    x[:, 0] += torch.where(y == 1, 2.0, -2.0)
    return MIADataset('blobs', x, y, 2, 'tabular')

def _images(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(3, (n,), generator=g)
    x = torch.randn(n, 1, 8, 8, generator=g) + y.view(-1, 1, 1, 1).float()
    return MIADataset('tiny_images', x, y, 3, 'image')

def test_m1_equals_train_model_exactly():
    "With one model (and the same layout) the fused loop is train_model: same batches, same ops, same Adam -> identical weights."
    ds = _images()
    tr, dv = np.arange(64), np.arange(64, 96)
    cfg = TrainConfig(epochs=3, batch_size=16, patience=0)
    a = train_model(build_model('cnn', 3, (1, 8, 8), seed=3), ds, tr, dv, cfg, seed=3, device='cpu', progress=False)
    b, = train_models_fused([build_model('cnn', 3, (1, 8, 8), seed=3)], ds, [(tr, dv)], cfg, [3], device='cpu', progress=False, channels_last=False)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # incl. BN running stats
    assert [h['dev_acc'] for h in a.history] == pytest.approx([h['dev_acc'] for h in b.history])
    assert a.best_epoch == b.best_epoch
    # channels-last (the CPU default) changes the kernels, not the recipe: equal within float error
    c, = train_models_fused([build_model('cnn', 3, (1, 8, 8), seed=3)], ds, [(tr, dv)], cfg, [3], device='cpu', progress=False, channels_last=True)
    sc = c.model.state_dict()
    assert max(float((sa[k].float() - sc[k].float()).abs().max()) for k in sa) < 1e-3

def test_each_model_sees_its_own_batches():
    "Two linear models on label-flipped copies of the data learn opposite weights; each equals its own train_model run."
    ds = _blobs()
    flipped = MIADataset('blobs_flip', ds.x.clone(), 1 - ds.y, 2, 'tabular')
    both = MIADataset('both', torch.cat([ds.x, flipped.x]), torch.cat([ds.y, flipped.y]), 2, 'tabular')
    n = len(ds)
    splits = [(np.arange(0, 200), np.arange(200, n)), (np.arange(n, n + 200), np.arange(n + 200, 2 * n))]
    lin = lambda: nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    torch.manual_seed(0); nets = [lin(), lin()]
    refs = [lin(), lin()]
    for r, m in zip(refs, nets): r.load_state_dict(m.state_dict())
    cfg = TrainConfig(epochs=4, batch_size=32, patience=0, weight_decay=0.0, lr=0.05)
    res = train_models_fused(nets, both, splits, cfg, [11, 12], device='cpu', progress=False)
    w = [r.model[1].weight.detach() for r in res]
    # class-1 minus class-0 weight on the separating axis: positive for the plain data, negative for the flipped copy
    assert float(w[0][1, 0] - w[0][0, 0]) > 0.3 and float(w[1][1, 0] - w[1][0, 0]) < -0.3
    assert res[0].best_dev_acc > 0.95 and res[1].best_dev_acc > 0.95
    for r, ref, sp, s in zip(res, refs, splits, [11, 12]):
        want = train_model(ref, both, *sp, cfg, seed=s, device='cpu', progress=False)
        for k, v in want.model.state_dict().items(): torch.testing.assert_close(r.model.state_dict()[k], v, rtol=1e-5, atol=1e-6)

def test_early_stopper_freezes_while_others_continue():
    "Model 0 cannot improve on its dev set and stops at best + patience; model 1 memorises its (dev = train) set and goes on."
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 16, generator=g); y = torch.randint(2, (128,), generator=g)
    y[96:] = 0  # model 0's dev labels: all 0, where it learns nothing useful
    pool = MIADataset('stop', x, y, 2, 'tabular')
    splits = [(np.arange(0, 64), np.arange(96, 128)), (np.arange(0, 64), np.arange(0, 64))]
    mlp = lambda: nn.Sequential(nn.Flatten(), nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 2))
    torch.manual_seed(0)
    nets = [mlp(), mlp()]
    alone = mlp(); alone.load_state_dict(nets[0].state_dict())
    cfg = TrainConfig(epochs=12, batch_size=16, patience=2, weight_decay=0.0, lr=3e-3)
    res = train_models_fused(nets, pool, splits, cfg, [1, 2], device='cpu', progress=False)
    h0, h1 = res[0].history, res[1].history
    assert len(h0) == res[0].best_epoch + cfg.patience + 1 < len(h1)  # stopped by the patience rule; the other went on
    assert h0[-1]['fused_models'] == 2 and h1[-1]['fused_models'] == 1
    # the restored state is the best-dev one: the dev accuracy of the weights equals the best recorded
    with torch.no_grad(): acc = float((res[0].model(pool.x[96:]).argmax(1) == pool.y[96:]).float().mean())
    assert acc == pytest.approx(res[0].best_dev_acc)
    # the stopped model did not change after it stopped: it equals the same model trained alone with the same recipe
    ref = train_model(alone, pool, *splits[0], cfg, seed=1, device='cpu', progress=False)
    assert ref.best_epoch == res[0].best_epoch and len(ref.history) == len(h0)
    for k, v in ref.model.state_dict().items(): torch.testing.assert_close(res[0].model.state_dict()[k], v, rtol=1e-5, atol=1e-6)

def test_batchnorm_statistics_per_model():
    "BN running stats of models fed differently scaled data differ per model, and each matches its own data's moments."
    shift = [0.0, 5.0]
    n = 128
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(n, 1, 8, 8, generator=g) + s for s in shift]); y = torch.randint(3, (2 * n,), generator=g)
    ds = MIADataset('bn', x, y, 3, 'image')
    splits = [(np.arange(0, 96), np.arange(96, 128)), (np.arange(128, 224), np.arange(224, 256))]
    nets = [build_model('cnn', 3, (1, 8, 8), seed=i) for i in range(2)]
    cfg = TrainConfig(epochs=2, batch_size=32, patience=0)
    res = train_models_fused(nets, ds, splits, cfg, [0, 1], device='cpu', progress=False)
    rm = [float(r.model.features[0][1].running_mean.abs().mean()) for r in res]
    assert rm[1] > 3 * rm[0]  # the shifted model's first BN saw larger conv outputs
    ref = train_model(build_model('cnn', 3, (1, 8, 8), seed=1), ds, *splits[1], cfg, seed=1, device='cpu', progress=False)
    torch.testing.assert_close(res[1].model.features[0][1].running_mean, ref.model.features[0][1].running_mean, rtol=1e-3, atol=1e-3)

def test_fuse_roundtrip_and_errors():
    nets = [build_model('mlp', 3, (5,), seed=i) for i in range(3)]
    f = fuse_models(nets)
    parts = split_state(f)
    for p, m in zip(parts, nets):
        for k, v in m.state_dict().items(): assert torch.equal(p[k], v)
    x = torch.randn(3, 4, 5)
    torch.testing.assert_close(unpack_logits(f(pack_inputs(x)), 3), torch.stack([m(x[i]) for i, m in enumerate(nets)]))
    with pytest.raises(ValueError, match='does not reproduce'):
        fuse_models([build_model('densenet121', 3, (3, 8, 8), seed=i) for i in range(2)])
    with pytest.raises(ValueError, match='one split and one seed'):
        train_models_fused(nets, _blobs(d=5), [(np.arange(10), np.arange(10, 20))], TrainConfig(epochs=1), [0, 1, 2])
    with pytest.raises(ValueError, match="True, False or 'auto'"): use_fused('yes', 'cnn')
    assert use_fused('auto', 'cnn', 'cpu') is False and use_fused(True, 'cnn', 'cpu') is True

def test_dense_models_fused_switch(tmp_path):
    "fused=True caches each model under a key with a `fused` field; fused=False keeps the sequential keys unchanged."
    from mia_pruning.data import load_dataset
    ds = load_dataset('digits')
    cache = ArtifactCache(tmp_path)
    cfg = TrainConfig(epochs=2)
    seq = dense_models(ds, 'mlp', num_shadows=2, cfg=cfg, cache=cache, device='cpu', progress=False, fused=False)
    fz = dense_models(ds, 'mlp', num_shadows=2, cfg=cfg, cache=cache, device='cpu', progress=False, fused=True)
    assert len(list((tmp_path / 'dense_model').iterdir())) == 6
    assert all(seq.records[r]['key'] != fz.records[r]['key'] for r in seq.records)
    assert fz.records['victim']['fused'] and 'fused' not in seq.records['victim']
    assert 'fused' not in dense_key(ds, seq.splits.victim, 'mlp', cfg, 1, 'victim')
    again = dense_models(ds, 'mlp', num_shadows=2, cfg=cfg, cache=cache, device='cpu', progress=False, fused=True)
    assert again.records == fz.records  # loaded, not retrained
