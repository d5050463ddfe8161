"Tests of mia_pruning.compact: equal logits after the cut, and no silent change of a study-semantics model."
import numpy as np
import pytest
import torch
from torch import nn

from mia_pruning.models import build_model
from mia_pruning.prune import prune_model
from mia_pruning.compact import compact_model, compare_inference, find_constant_channels
from test_prune import SHAPES, trained_looking  # one definition of the test models


@pytest.mark.parametrize('method', ['l1_structured', 'slimming'])
def test_compact_resnet20_equal_logits(method):
    s = 0.5 if method == 'l1_structured' else 0.9      # slimming at 0.9 empties whole layers: groups keep one channel
    m = prune_model(trained_looking('resnet20'), method, s, structured_bn='zero')   # true removal
    small = compact_model(m, (3, 32, 32))
    cmp = compare_inference(m, small, (3, 32, 32), batch_size=8, repeats=1)
    assert cmp['compact']['params_total'] < cmp['masked']['params_total']
    assert cmp['max_abs_diff'] < 1e-4
    assert cmp['compact']['macs_effective'] == cmp['masked']['macs_effective']
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad(): assert float((m.eval()(x) - small(x)).abs().max()) < 1e-4


def test_compact_refuses_or_zeroes_the_studys_constant_channels():
    "structured_bn='keep' (the default) leaves constant channels: compact_model says so, or zeroes them when asked."
    keep = prune_model(trained_looking('resnet20'), 'l1_structured', 0.5)
    zero = prune_model(trained_looking('resnet20'), 'l1_structured', 0.5, structured_bn='zero')
    const = find_constant_channels(keep)
    n = sum(int(v.sum()) for v in const.values())
    assert n > 0 and find_constant_channels(zero) == {}
    with pytest.raises(ValueError, match=f"{n} channels .*structured_bn='zero'"): compact_model(keep, (3, 32, 32))
    with pytest.raises(ValueError, match='constant_channels must be one of'): compact_model(keep, (3, 32, 32), constant_channels='x')
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    zeroed = compact_model(keep, (3, 32, 32), constant_channels='zero')
    kept = compact_model(keep, (3, 32, 32), constant_channels='keep')
    with torch.no_grad():
        assert torch.allclose(zeroed(x), zero.eval()(x), atol=1e-4)          # it became the true-removal model ...
        assert (zeroed(x) - keep.eval()(x)).abs().max() > 1e-3               # ... not the one given, and says so:
        assert torch.allclose(kept(x), keep(x), atol=1e-4)
    assert zeroed.compact_info['constant_channels_zeroed'] == n and zeroed.compact_info['zeroing_change'] > 1e-3
    assert kept.compact_info['constant_channels_zeroed'] == 0
    assert kept.compact_info['channels_removed'] < zeroed.compact_info['channels_removed']
    cmp = compare_inference(keep, zeroed, (3, 32, 32), batch_size=4, repeats=1)
    assert cmp['constant_channels_zeroed'] == n and cmp['max_abs_diff'] > 1e-3
