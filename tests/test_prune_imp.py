"Tests of mia_pruning.imp: the schedule reaches its sparsity, rewinds go where they should, masks are kept."
import numpy as np
import pytest
import torch
from torch import nn

import mia_pruning.prune as P
import mia_pruning.imp as I
from mia_pruning.data import MIADataset, Split
from mia_pruning.models import build_model
from mia_pruning.prune import prune_model, sparsity_report, effective_param
from mia_pruning.imp import iterative_magnitude_prune, imp_schedule
from mia_pruning.train import TrainConfig
from test_prune import SHAPES, trained_looking  # one definition of the test models


def tiny_data(shape, n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    ds = MIADataset('tiny', torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g), 10, 'image')
    return ds, Split(np.arange(0, 32), np.arange(32, 40), np.arange(40, n))


@pytest.mark.parametrize('arch', list(SHAPES))
def test_imp_sparsity_and_rewind(arch):
    ds, split = tiny_data(SHAPES[arch])
    cfg = TrainConfig(epochs=1, batch_size=16, max_batches=1, patience=0)
    for s in [0.5, 0.9]:
        init = build_model(arch, 10, SHAPES[arch], seed=3)
        init_state = P.plain_state_dict(init, clone=True)
        res = iterative_magnitude_prune(init, ds, split, s, rounds=2, rewind_epochs=0, cfg=cfg, seed=0, progress=False)
        assert abs(sparsity_report(res.model, 'imp', s)['measured'] - s) <= 0.02
        assert [r['round'] for r in res.rounds] == [1, 2] and res.rounds[0]['target'] < s
        assert all(torch.equal(res.rewind_state[k], init_state[k]) for k in init_state)   # rewind to the init
    # rewinding keeps the masks and restores every surviving weight
    m = prune_model(build_model('cnn', 10, (1, 8, 8), seed=1), 'imp', 0.5)
    target = P.plain_state_dict(build_model('cnn', 10, (1, 8, 8), seed=2))
    I._rewind(m, target)
    conv = m.features[0][0]
    assert torch.equal(conv.weight_orig.detach(), target['features.0.0.weight'])
    assert torch.equal(effective_param(conv, 'weight'), target['features.0.0.weight'] * conv.weight_mask)
