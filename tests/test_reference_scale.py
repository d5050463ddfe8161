"""Attacks that standardise by reference statistics put the shadow side (where thresholds and models are fitted) and the
target side (where they are applied) on one scale for every reference count, or refuse / fall back with a note."""
import numpy as np
import pytest
from mia_pruning.attacks import (lira_scores, out_reference_sd, ref_z, rmia_scores, run_attacks, synthetic_attack_data,
                                 synthetic_release_pair, synthetic_releases, multi_release_features, two_release_features)

OVERLAP = 0.45  # a shadow record is in another shadow's training set about this often (shadows re-split one pool)


def _sides(design, count, seed=0):
    "Null-case shadow and target pairs: 'shadows' = K shadows (K-1 overlapping references vs K OUT), 'references' = R OUT each side."
    if design == 'shadows': (rs, frac), rt = (count - 1, OVERLAP), count
    else: (rs, frac), rt = (count, 0.0), count
    return (synthetic_release_pair(3000, num_refs=rs, ref_in_frac=frac, seed=seed),
            synthetic_release_pair(3000, num_refs=rt, seed=seed + 1))


def _ratio(a, b): return float(np.nanstd(a) / np.nanstd(b))


@pytest.mark.parametrize('design', ['shadows', 'references'])
@pytest.mark.parametrize('count', [1, 2, 4])
def test_two_release_features_have_one_scale_on_both_sides(design, count):
    sh, tg = _sides(design, count)
    f = two_release_features(sh, tg)
    assert f.shadow.shape == (len(sh), len(f.names)) and f.target.shape == (len(tg), len(f.names))
    assert np.isfinite(f.shadow[f.shadow_rows]).all() and np.isfinite(f.target).all()
    for j, name in enumerate(f.names):  # the same statistic on both sides: same order of magnitude of spread
        r = _ratio(f.shadow[f.shadow_rows, j], f.target[:, j])
        assert 1 / 3 < r < 3, (design, count, name, r)
    has_refs = not (design == 'shadows' and count == 1)  # one shadow: the shadow side has no reference at all
    assert any(n.startswith('lira_z') for n in f.names) == has_refs and any(n.startswith('rmia') for n in f.names) == has_refs
    if not has_refs: assert any('left out' in n for n in f.notes), f.notes
    if design == 'references' and count == 1:  # one OUT reference per record anywhere: no variance, z in logit units, noted
        assert f.lira_sd == {'dense': 1.0, 'pruned': 1.0} and any('logit units' in n for n in f.notes), f.notes


@pytest.mark.parametrize('design', ['shadows', 'references'])
@pytest.mark.parametrize('count', [1, 2, 4])
def test_multi_release_features_have_one_scale_on_both_sides(design, count):
    "Every release's columns (and their changes from the dense release) have the same spread on the shadow and the target side."
    (rs, frac), rt = ((count - 1, OVERLAP), count) if design == 'shadows' else ((count, 0.0), count)
    kw = dict(shifts=(0.0,) * 4, names=('dense', 's0.5', 's0.7'), shared=0.5)
    sh = synthetic_releases(3000, num_refs=rs, ref_in_frac=frac, seed=8, **kw)
    tg = synthetic_releases(3000, num_refs=rt, seed=9, **kw)
    f = multi_release_features(sh, tg)
    assert np.isfinite(f.shadow[f.shadow_rows]).all() and np.isfinite(f.target).all()
    has_refs = not (design == 'shadows' and count == 1)
    assert len(f.names) == (3 if has_refs else 1) * (4 + 3), f.names
    for j, name in enumerate(f.names):
        r = _ratio(f.shadow[f.shadow_rows, j], f.target[:, j])
        assert 1 / 3 < r < 3, (design, count, name, r)
    if has_refs: assert sorted(f.lira_sd) == ['attacked', 'dense', 's0.5', 's0.7']  # each release its own OUT sd, shared by both sides
    if design == 'references' and count == 1: assert set(f.lira_sd.values()) == {1.0} and any('logit units' in n for n in f.notes)
    assert abs(run_attacks(['multi_release'], sh, tg)['multi_release'].metrics['auc'] - 0.5) < 0.05  # a null case stays at chance


def test_out_reference_sd_pools_within_records_and_counts_degrees_of_freedom():
    d = synthetic_attack_data(4000, num_refs=6, seed=3)  # every record: 3 OUT references, per-model noise 0.5
    sd, dof = out_reference_sd(d)
    assert dof == 4000 * 2 and abs(sd - 0.5) < 0.02, (sd, dof)
    one = synthetic_attack_data(500, num_refs=2, seed=4)  # 1 OUT reference per record: nothing to estimate from
    assert out_reference_sd(one)[1] == 0 and np.isnan(out_reference_sd(one)[0])
    assert out_reference_sd(one, d) == pytest.approx(out_reference_sd(d))  # pooled with a side that has them: that side's
    z = ref_z(d, 0.5)
    n_out = (~d.ref_in).sum(1)
    mu = np.where(~d.ref_in, d.ref_lsc, 0).sum(1) / n_out
    np.testing.assert_allclose(z, (d.lsc - mu) / 0.5)


REF_ATTACKS = {
    'lira_offline': lambda d: lira_scores(d.lsc, d.ref_lsc, d.ref_in, online=False),
    'lira_online': lambda d: lira_scores(d.lsc, d.ref_lsc, d.ref_in, online=True),
    'rmia': lambda d: rmia_scores(d.py, d.ref_py, d.ref_in, d.group, d.pop_py, d.pop_ref_py),
}


@pytest.mark.parametrize('attack', list(REF_ATTACKS))
@pytest.mark.parametrize('design,count', [('shadows', 2), ('shadows', 4), ('balanced', 1), ('balanced', 2), ('balanced', 4)])
def test_reference_attacks_fit_on_the_scale_they_apply_or_say_why_not(attack, design, count):
    "Each reference attack either refuses (target), falls back to its default threshold with a note, or fits on comparable scores."
    if design == 'shadows': sh, tg = _sides('shadows', count, seed=5)  # K shadows: K-1 overlapping vs K OUT references
    else:  # each record IN for R // 2 of R references (LiRA's balanced design), on both sides
        sh, tg = (synthetic_attack_data(3000, shift=0.0, num_refs=count, num_pop=200, seed=s) for s in (6, 7))
    try:
        res = run_attacks([attack], sh, tg)[attack]
    except ValueError as e:  # refused before any work, saying what is missing
        assert 'reference model' in str(e), str(e)
        return
    st, ss = res.scores, REF_ATTACKS[attack](sh)
    assert np.isfinite(st).all()
    if res.info['threshold_from'] == 'default':
        assert res.info['threshold_note'], res.info
    else:
        assert res.info['threshold_from'].startswith('shadow')
        r = _ratio(ss[np.isfinite(ss)], st)
        assert 1 / 3 < r < 3, (attack, design, count, r)
    assert abs(res.metrics['auc'] - 0.5) < 0.05  # a null case stays at chance
