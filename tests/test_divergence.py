"Prediction divergence: per-class and overall gaps on constructed data with known answers, figures, and a real model."
import numpy as np
import pandas as pd
import pytest
import torch

from mia_pruning.features import AttackData
from mia_pruning.divergence import (per_class_gaps, divergence_summary, gap_arrays, plot_divergence, plot_class_gaps,
                                    divergence_data)


def constructed(C=4, n_per=50, conf_in=None, conf_out=None, sens_in=None, sens_out=None, seed=0):
    """Members of class k have p_y = conf_in[k] exactly, non-members conf_out[k]; sensitivities likewise.
    The remaining mass is spread randomly over the other classes (it must not matter)."""
    rng = np.random.default_rng(seed)
    conf_in = conf_in if conf_in is not None else np.linspace(0.9, 0.6, C)
    conf_out = conf_out if conf_out is not None else np.linspace(0.7, 0.5, C)
    sens_in = sens_in if sens_in is not None else np.linspace(1, 2, C)
    sens_out = sens_out if sens_out is not None else np.linspace(3, 2, C)
    probs, sens, labels, member = [], [], [], []
    for k in range(C):
        for mb, p, s in ((True, conf_in[k], sens_in[k]), (False, conf_out[k], sens_out[k])):
            rest = rng.dirichlet(np.ones(C - 1), n_per) * (1 - p)
            row = np.insert(rest, k, p, axis=1)
            srow = np.insert(rng.uniform(0, 10, (n_per, C - 1)), k, s, axis=1)
            probs.append(row); sens.append(srow); labels += [k] * n_per; member += [mb] * n_per
    return AttackData(probs=np.vstack(probs), labels=np.array(labels), is_member=np.array(member), sensitivity=np.vstack(sens))


def test_per_class_gaps_known_answer():
    d = constructed()
    g = per_class_gaps(d)
    assert list(g.label) == [0, 1, 2, 3] and (g.n_members == 50).all() and (g.n_nonmembers == 50).all()
    np.testing.assert_allclose(g.conf_gap, np.linspace(0.9, 0.6, 4) - np.linspace(0.7, 0.5, 4), atol=1e-12)
    np.testing.assert_allclose(g.sens_gap, np.linspace(3, 2, 4) - np.linspace(1, 2, 4), atol=1e-12)
    np.testing.assert_allclose(g.conf_member, np.linspace(0.9, 0.6, 4), atol=1e-12)


def test_summary_known_answer_and_spread():
    d = constructed()
    s = divergence_summary(d)
    conf_gaps = np.linspace(0.9, 0.6, 4) - np.linspace(0.7, 0.5, 4)   # 0.2, 0.1667, 0.1333, 0.1
    sens_gaps = np.linspace(3, 2, 4) - np.linspace(1, 2, 4)           # 2, 1.333, 0.667, 0
    assert s['conf_gap'] == pytest.approx(conf_gaps.mean(), abs=1e-12)  # equal class sizes: overall = mean of classes
    assert s['conf_gap_class_mean'] == pytest.approx(conf_gaps.mean(), abs=1e-12)
    assert s['conf_gap_class_std'] == pytest.approx(conf_gaps.std(), abs=1e-12)
    assert s['sens_gap_class_std'] == pytest.approx(sens_gaps.std(), abs=1e-12)
    assert s['sens_gap'] == pytest.approx(sens_gaps.mean(), abs=1e-12)
    assert s['n_classes'] == 4


def test_overall_gap_is_sample_weighted_not_class_averaged():
    d = constructed(C=2, n_per=10, conf_in=[0.9, 0.5], conf_out=[0.6, 0.5])
    # drop 8 members of class 1 (p_y 0.5): members' mean = (10*0.9 + 2*0.5) / 12
    keep = ~((d.labels == 1) & d.is_member & (np.arange(len(d)) % 10 < 8))
    s = divergence_summary(d.subset(keep))
    assert s['conf_member'] == pytest.approx((10 * 0.9 + 2 * 0.5) / 12, abs=1e-12)
    assert s['conf_gap'] == pytest.approx((10 * 0.9 + 2 * 0.5) / 12 - (10 * 0.6 + 10 * 0.5) / 20, abs=1e-12)
    assert s['conf_gap_class_mean'] == pytest.approx((0.3 + 0.0) / 2, abs=1e-12)


def test_change_between_two_models():
    a = constructed()
    b = constructed(conf_in=np.linspace(0.9, 0.6, 4) + 0.05, sens_out=np.linspace(3, 2, 4) + np.array([1.0, 0, 0, 0]))
    s = divergence_summary(a, b)
    assert s['change/conf_gap'] == pytest.approx(0.05, abs=1e-12)
    assert s['change/conf_gap_class_std'] == pytest.approx(0.0, abs=1e-12)      # all classes moved equally
    assert s['change/sens_gap'] == pytest.approx(0.25, abs=1e-12)               # one class of four by 1
    old, new = np.array([2, 4 / 3, 2 / 3, 0]), np.array([3, 4 / 3, 2 / 3, 0])       # class 0's gap grows: more spread
    assert s['change/sens_gap_class_std'] == pytest.approx(new.std() - old.std(), abs=1e-12)
    named = divergence_summary(a, b, names=('plain', 'ppb'))
    assert named['ppb/conf_gap'] == s['pruned/conf_gap'] and 'plain/sens_gap' in named


def test_classes_without_both_sides_and_missing_sensitivity():
    d = constructed(C=3)
    no_nonmembers_in_2 = d.subset(~((d.labels == 2) & ~d.is_member))
    g = per_class_gaps(no_nonmembers_in_2)
    assert g.loc[2, 'n_nonmembers'] == 0 and np.isnan(g.loc[2, 'conf_gap'])
    s = divergence_summary(no_nonmembers_in_2)
    assert s['n_classes'] == 2
    assert s['conf_gap_class_mean'] == pytest.approx(g.conf_gap[:2].mean(), abs=1e-12)
    plain = {'probs': d.probs, 'labels': d.labels, 'is_member': d.is_member}      # a dict without sensitivity
    g2 = per_class_gaps(plain)
    assert g2.sens_gap.isna().all() and np.allclose(g2.conf_gap, per_class_gaps(d).conf_gap)
    assert np.isnan(divergence_summary(plain)['sens_gap'])


def test_bad_input():
    d = constructed(C=2)
    with pytest.raises(ValueError, match='both members and non-members'):
        divergence_summary({'probs': d.probs, 'labels': d.labels, 'is_member': np.ones(len(d), bool)})
    with pytest.raises(ValueError, match='lacking'):
        per_class_gaps({'probs': d.probs, 'labels': d.labels})
    with pytest.raises(ValueError, match='labels must lie'):
        per_class_gaps({'probs': d.probs, 'labels': d.labels + 5, 'is_member': d.is_member})
    with pytest.raises(ValueError, match='sensitivity must have shape'):
        per_class_gaps({'probs': d.probs, 'labels': d.labels, 'is_member': d.is_member, 'sensitivity': d.sensitivity[:, :1]})


def test_gap_arrays_and_figures(tmp_path):
    a, b = constructed(), constructed(seed=1)
    arr = gap_arrays(a, b)
    assert arr['dense/conf_gap'].shape == (4,) and set(arr) >= {'pruned/sens_gap', 'dense/conf_member'}
    fig = plot_divergence(a, b, path=tmp_path / 'div.png')
    axes = fig.axes
    assert len(axes) == 4 and all(ax.get_yscale() == 'log' for ax in axes)
    assert len(axes[0].patches) == 2 * 30                                           # 30 bins, two groups
    means = sorted(l.get_xdata()[0] for l in axes[0].lines)                          # the dashed mean markers
    assert means == pytest.approx(sorted([a.py[a.is_member].mean(), a.py[~a.is_member].mean()]))
    fig2 = plot_class_gaps(a, b, path=tmp_path / 'gaps.png')
    assert len(fig2.axes) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ['div.png', 'gaps.png']
    one = plot_divergence({'probs': a.probs, 'labels': a.labels, 'is_member': a.is_member})
    assert len(one.axes) == 1                                                       # confidence only, one model


def test_divergence_data_on_a_model():
    from mia_pruning.data import load_dataset
    from mia_pruning.models import build_model
    ds = load_dataset('digits')
    m = build_model('mlp', 10, ds.input_shape, seed=0)
    d = divergence_data(m, ds, np.arange(0, 40), np.arange(40, 70), m=3, device='cpu')
    assert d.sensitivity.shape == (70, 10) and d.is_member.sum() == 40
    g = per_class_gaps(d)
    assert len(g) == 10 and (g.n_members + g.n_nonmembers).sum() == 70
