"Tests of mia_pruning.attacks on synthetic attack data with a known answer (and a tiny digits setup)."
import math
import numpy as np
import pytest
import torch
from scipy.stats import norm
from mia_pruning.features import AttackData
from mia_pruning.attacks import (ATTACKS, AttackResult, balanced_in_mask, entropy_value, fit_class_thresholds, lira_scores,
                                 mentr_value, population_indices, resolve_attacks, results_frame, rmia_scores, run_attacks,
                                 shadow_attack_data, synthetic_attack_data, train_reference_models)

THRESHOLD = ['gap', 'conf', 'entropy', 'mentr', 'top1_conf', 'loss']
LEARNED = ['nn', 'nn_top3', 'nn_cls', 'samia']
# the study's SGD learning rate (1e-3) needs ~100 epochs; these tests train for a few with a larger one
FAST = {'nn': {'lr': 0.05}, 'nn_top3': {'lr': 0.05}, 'nn_cls': {'lr': 0.05}, 'samia': {'lr': 0.01}}
REFERENCE = ['lira_offline', 'lira_online', 'rmia']


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    "Tiny attack models train faster on one thread (and do not fight other processes for the second core)."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _auc(res, name): return res[name].metrics['auc']


def test_registry_and_names():
    assert list(ATTACKS) == THRESHOLD[:5] + LEARNED[:3] + ['samia', 'samia_nosens', 'loss'] + REFERENCE + ['qmia', 'two_release', 'multi_release']
    plain = [n for n in ATTACKS if n != 'samia_nosens']  # an ablation runs only where named, never in 'all'
    assert resolve_attacks('all') == plain[:-1] and resolve_attacks('all', releases=True) == plain  # several releases: only where a cell has them
    assert [n for n, a in ATTACKS.items() if a.ablation] == ['samia_nosens'] and resolve_attacks('samia_nosens') == ['samia_nosens']
    assert resolve_attacks(' conf,gap ,conf') == ['conf', 'gap']
    with pytest.raises(ValueError, match="known attacks: \\['gap'"): resolve_attacks(['conf', 'lira'])
    assert ATTACKS['samia'].needs_sensitivity and not ATTACKS['nn'].needs_sensitivity


def test_threshold_attacks_separable():
    sh, tg = synthetic_attack_data(2000, seed=10), synthetic_attack_data(2000, seed=11)
    res = run_attacks(THRESHOLD, sh, tg, device='cpu')
    for n in THRESHOLD:
        r = res[n]
        assert isinstance(r, AttackResult) and r.scores.shape == (2000,) and r.is_member_pred.dtype == bool
        assert r.metrics['auc'] > 0.8, (n, r.metrics['auc'])
        assert r.metrics['attack_acc'] > 0.75, (n, r.metrics['attack_acc'])
    # the hard decisions are the scores' own threshold: margin >= 0 (per class) or value >= tau (global)
    for n in ['conf', 'entropy', 'mentr']:
        np.testing.assert_array_equal(res[n].is_member_pred, res[n].scores >= 0)
    np.testing.assert_array_equal(res['top1_conf'].is_member_pred, tg.py >= res['top1_conf'].info['threshold'])
    np.testing.assert_array_equal(res['gap'].scores, (tg.probs.argmax(1) == tg.labels))


def test_threshold_attacks_identical():
    sh, tg = synthetic_attack_data(6000, shift=0, seed=20), synthetic_attack_data(6000, shift=0, seed=21)
    res = run_attacks(THRESHOLD, sh, tg, device='cpu')
    for n in THRESHOLD:
        assert abs(_auc(res, n) - 0.5) < 0.05, (n, _auc(res, n))
        assert abs(res[n].metrics['attack_acc'] - 0.5) < 0.05, (n, res[n].metrics['attack_acc'])


def test_thresholds_fitted_on_shadow_only():
    sh, tg = synthetic_attack_data(1000, seed=1), synthetic_attack_data(1000, seed=2)
    a = run_attacks(['conf', 'top1_conf'], sh, tg, device='cpu')
    flipped = AttackData(probs=tg.probs, labels=tg.labels, is_member=~tg.is_member, sensitivity=tg.sensitivity)
    b = run_attacks(['conf', 'top1_conf'], sh, flipped, device='cpu')
    for n in a:  # the target's membership never moves a threshold: same scores, same decisions, mirrored AUC
        np.testing.assert_array_equal(a[n].scores, b[n].scores)
        np.testing.assert_array_equal(a[n].is_member_pred, b[n].is_member_pred)
        assert a[n].metrics['auc'] == pytest.approx(1 - b[n].metrics['auc'])


def test_per_class_fallback_to_global():
    v = np.array([0.9, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.7, 0.75])
    m = np.array([1, 1, 0, 0, 1, 1, 0, 0, 1, 1], bool)
    lab = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])  # class 2: members only; class 3: absent
    taus, tau_all, own = fit_class_thresholds(v, m, lab, 4)
    assert own.tolist() == [True, True, False, False]
    assert taus[2] == tau_all and taus[3] == tau_all
    assert ((v[:8] >= taus[lab[:8]]) == m[:8]).all()


def test_value_definitions():
    p = np.array([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5], [1.0, 0.0, 0.0]])
    y = np.array([0, 2, 1])
    d = AttackData(probs=p, labels=y, is_member=[True, False, True])
    lit = []
    for row, c in zip(p, y):
        q = np.clip(row, 1e-30, None); r = np.clip(1 - row, 1e-30, None)
        lit.append((1 - row[c]) * np.log(q[c]) + sum(row[i] * np.log(r[i]) for i in range(3) if i != c))
    np.testing.assert_allclose(mentr_value(d), lit, rtol=1e-12)
    np.testing.assert_allclose(entropy_value(d), [np.sum(r * np.log(np.clip(r, 1e-30, None))) for r in p], rtol=1e-12)
    assert np.isfinite(mentr_value(d)).all()


def test_learned_attacks_learn_a_signal():
    sh, tg = synthetic_attack_data(400, shift=6, seed=10), synthetic_attack_data(600, shift=6, seed=11)
    res = run_attacks(LEARNED, sh, tg, device='cpu', epochs=15, options=FAST)
    for n in LEARNED:
        assert _auc(res, n) > 0.8, (n, _auc(res, n))
        np.testing.assert_array_equal(res[n].is_member_pred, res[n].scores >= 0.5)
        assert ((res[n].scores >= 0) & (res[n].scores <= 1)).all()


def test_learned_attacks_identical():
    sh, tg = synthetic_attack_data(1500, shift=0, seed=30), synthetic_attack_data(1500, shift=0, seed=31)
    res = run_attacks(LEARNED, sh, tg, device='cpu', epochs=2, options=FAST)
    for n in LEARNED: assert abs(_auc(res, n) - 0.5) < 0.05, (n, _auc(res, n))


def test_samia_uses_sensitivity():
    "Only the sensitivity differs between members and non-members: SAMIA sees it, nn cannot."
    kw = dict(shift=0, sens_shift=2.0)
    sh, tg = synthetic_attack_data(400, seed=40, **kw), synthetic_attack_data(600, seed=41, **kw)
    res = run_attacks(['samia', 'nn'], sh, tg, device='cpu', epochs=12, options={'samia': FAST['samia'], 'nn': FAST['nn']})
    assert _auc(res, 'samia') > 0.8 and abs(_auc(res, 'nn') - 0.5) < 0.08, (_auc(res, 'samia'), _auc(res, 'nn'))


def test_determinism():
    sh, tg = synthetic_attack_data(300, seed=50), synthetic_attack_data(300, seed=51)
    kw = dict(device='cpu', epochs=2)
    a = run_attacks(['nn', 'samia'], sh, tg, seed=3, **kw)
    torch.manual_seed(123); np.random.seed(5)  # global RNG state must not matter
    b = run_attacks(['samia', 'nn'], sh, tg, seed=3, **kw)
    c = run_attacks(['nn'], sh, tg, seed=4, **kw)
    for n in a: np.testing.assert_array_equal(a[n].scores, b[n].scores)
    assert not np.array_equal(a['nn'].scores, c['nn'].scores)
    d = run_attacks('all', synthetic_attack_data(300, num_refs=4, num_pop=120, seed=52),
                    synthetic_attack_data(300, num_refs=4, num_pop=120, seed=53), seed=3, **kw)
    e = run_attacks('all', synthetic_attack_data(300, num_refs=4, num_pop=120, seed=52),
                    synthetic_attack_data(300, num_refs=4, num_pop=120, seed=53), seed=3, **kw)
    for n in d: np.testing.assert_array_equal(d[n].scores, e[n].scores)


def test_lira_scores_match_scipy():
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, (5, 6)); rin = np.array([[1, 1, 1, 0, 0, 0]] * 5, bool); obs = rng.normal(0, 1, 5)
    mi, mo = ref[:, :3].mean(1), ref[:, 3:].mean(1)
    si, so = ref[:, :3].std(1, ddof=1), ref[:, 3:].std(1, ddof=1)
    on = lira_scores(obs, ref, rin, online=True, fix_variance=False)
    np.testing.assert_allclose(on, norm.logpdf(obs, mi, si) - norm.logpdf(obs, mo, so), rtol=1e-10)
    off = lira_scores(obs, ref, rin, online=False, fix_variance=False)
    np.testing.assert_allclose(off, -norm.logsf(obs, mo, so), rtol=1e-10)
    # fixed variance: one pooled within-sample standard deviation
    sp = math.sqrt((((ref[:, :3] - mi[:, None]) ** 2).sum() + ((ref[:, 3:] - mo[:, None]) ** 2).sum()) / (5 * 4))
    np.testing.assert_allclose(lira_scores(obs, ref, rin, online=True, fix_variance=True),
                               norm.logpdf(obs, mi, sp) - norm.logpdf(obs, mo, sp), rtol=1e-10)
    # too few references: NaN, never a made-up number
    assert np.isnan(lira_scores(obs, ref[:, 2:4], rin[:, 2:4], online=True, fix_variance=False)).all()


@pytest.mark.parametrize('name,fix', [('lira_offline', True), ('lira_offline', False), ('lira_online', True),
                                      ('lira_online', False), ('rmia', None)])
def test_reference_attacks(name, fix):
    opts = {} if fix is None else {name: {'fix_variance': fix}}
    sep = [synthetic_attack_data(1500, num_refs=8, num_pop=300, seed=s) for s in (60, 61)]
    res = run_attacks(name, *sep, device='cpu', options=opts)
    assert _auc(res, name) > 0.9, _auc(res, name)
    assert res[name].info['threshold_from'].startswith('shadow')
    null = [synthetic_attack_data(4000, shift=0, num_refs=8, num_pop=300, seed=s) for s in (62, 63)]
    res = run_attacks(name, *null, device='cpu', options=opts)
    assert abs(_auc(res, name) - 0.5) < 0.05, _auc(res, name)
    assert abs(res[name].metrics['attack_acc'] - 0.5) < 0.05


def test_reference_attacks_beat_global_threshold_on_hard_samples():
    "Per-sample difficulty varies a lot: calibrating each sample by its references beats one global threshold."
    kw = dict(shift=1.5, spread=4.0, noise=0.3, num_refs=8, num_pop=400)
    sh, tg = synthetic_attack_data(3000, seed=70, **kw), synthetic_attack_data(3000, seed=71, **kw)
    res = run_attacks(['conf', 'loss', 'lira_online', 'lira_offline', 'rmia'], sh, tg, device='cpu')
    for n in ['lira_online', 'lira_offline']: assert _auc(res, n) > _auc(res, 'loss') + 0.1, (n, _auc(res, n), _auc(res, 'loss'))
    # RMIA compares probabilities, which saturate for very easy/hard samples: a smaller but clear gain
    assert _auc(res, 'rmia') > _auc(res, 'loss') + 0.03, (_auc(res, 'rmia'), _auc(res, 'loss'))


def test_rmia_definition_and_gamma():
    d = synthetic_attack_data(200, num_refs=4, num_pop=50, seed=80)
    s1 = rmia_scores(d.py, d.ref_py, d.ref_in, d.group, d.pop_py, d.pop_ref_py, a=0.5, gamma=1.0)
    mean_out = (d.ref_py * ~d.ref_in).sum(1) / (~d.ref_in).sum(1)
    rx = d.py / (0.75 * mean_out + 0.25)
    rz = d.pop_py[0] / (0.75 * d.pop_ref_py[0].mean(1) + 0.25)
    np.testing.assert_allclose(s1, (rx[:, None] / rz[None] > 1.0).mean(1))
    s2 = rmia_scores(d.py, d.ref_py, d.ref_in, d.group, d.pop_py, d.pop_ref_py, a=0.5, gamma=2.0)
    assert (s2 <= s1).all() and (s2 < s1).any()
    with pytest.raises(ValueError, match='a must'): rmia_scores(d.py, d.ref_py, d.ref_in, d.group, d.pop_py, d.pop_ref_py, a=2)
    # pooled records keep each target's own population
    both = AttackData.concat([d, d])
    s = rmia_scores(both.py, both.ref_py, both.ref_in, both.group, both.pop_py, both.pop_ref_py, a=0.5)
    np.testing.assert_allclose(s, np.r_[s1, s1])


def test_reference_threshold_defaults():
    tg = synthetic_attack_data(400, num_refs=4, num_pop=50, seed=90)
    sh = synthetic_attack_data(400, seed=91)  # no reference statistics on the shadow side
    res = run_attacks(REFERENCE, sh, tg, device='cpu')
    assert all(res[n].info['threshold_from'] == 'default' for n in REFERENCE)
    np.testing.assert_array_equal(res['lira_online'].is_member_pred, res['lira_online'].scores >= 0)
    np.testing.assert_array_equal(res['lira_offline'].is_member_pred, res['lira_offline'].scores >= math.log(2))
    np.testing.assert_array_equal(res['rmia'].is_member_pred, res['rmia'].scores >= 0.5)


def test_bad_input():
    sh = synthetic_attack_data(200, num_refs=4, num_pop=20, seed=1)
    tg = synthetic_attack_data(200, num_refs=4, num_pop=20, seed=2)
    with pytest.raises(ValueError, match='unknown attack'): run_attacks(['conf', 'bogus'], sh, tg)
    with pytest.raises(ValueError, match='target AttackData must contain both'): run_attacks('conf', sh, tg.subset(~tg.is_member))
    with pytest.raises(ValueError, match='shadow AttackData must contain both'): run_attacks('conf', sh.subset(sh.is_member), tg)
    with pytest.raises(ValueError, match='classes'): run_attacks('conf', synthetic_attack_data(100, num_classes=5), tg)
    with pytest.raises(TypeError, match='AttackData'): run_attacks('conf', {'probs': 1}, tg)
    nos = synthetic_attack_data(100, seed=3); nos.sensitivity = None
    with pytest.raises(ValueError, match=r"needs sensitivity .*\['shadow'\]"): run_attacks(['gap', 'samia'], nos, tg)
    two = synthetic_attack_data(100, num_refs=2, seed=4)  # each sample: 1 IN, 1 OUT
    with pytest.raises(ValueError, match='lira_offline needs >= 2 OUT.*2 reference models were given'):
        run_attacks('lira_offline', sh, two)
    with pytest.raises(ValueError, match='lira_online needs >= 2 IN .*2 reference models were given'):
        run_attacks('lira_online', sh, two)  # 1 IN + 1 OUT each: a single IN model is refused
    three = synthetic_attack_data(100, num_refs=3, seed=7)  # each sample: 1 IN, 2 OUT
    with pytest.raises(ValueError, match='single IN model'): run_attacks('lira_online', sh, three)
    run_attacks('lira_online', sh, synthetic_attack_data(100, num_refs=5, seed=7))  # 2 IN, 3 OUT: enough with a pooled variance
    with pytest.raises(ValueError, match='>= 2 IN and >= 2 OUT.*3 reference models'):
        run_attacks('lira_online', sh, three, options={'lira_online': {'fix_variance': False}})
    with pytest.raises(ValueError, match='0 reference models'): run_attacks('lira_offline', sh, synthetic_attack_data(100))
    with pytest.raises(ValueError, match='population'): run_attacks('rmia', sh, synthetic_attack_data(100, num_refs=4))
    with pytest.raises(ValueError, match=r"accepts \['fix_variance', 'min_std'\]"):
        run_attacks('lira_online', sh, tg, options={'lira_online': {'gamma': 2}})
    with pytest.raises(ValueError, match='not being run'): run_attacks('conf', sh, tg, options={'rmia': {'a': 0.1}})
    # all checks happen before any attack runs: a failing requirement at the end of the list stops everything
    with pytest.raises(ValueError, match='lira_offline'): run_attacks(['nn', 'samia', 'lira_offline'], sh, two, epochs=1000)


def test_results_frame():
    sh = synthetic_attack_data(300, num_refs=4, num_pop=30, seed=5)
    tg = synthetic_attack_data(300, num_refs=4, num_pop=30, seed=6)
    res = run_attacks(['gap', 'loss', 'rmia'], sh, tg, device='cpu', n_boot=20)
    df = results_frame(res, dataset='synthetic', model_state='dense')
    assert list(df.attack) == ['gap', 'loss', 'rmia'] and (df.dataset == 'synthetic').all()
    for c in ['kind', 'auc', 'attack_acc', 'best_acc', 'tpr_at_1pct_fpr', 'tpr_at_0_1pct_fpr', 'auc_lo', 'auc_hi', 'seconds']:
        assert c in df.columns, c
    assert df.set_index('attack').loc['rmia', 'kind'] == 'reference'


def test_balanced_in_mask():
    m = balanced_in_mask(1000, 6, seed=1)
    assert (m.sum(1) == 3).all() and abs(m.mean(0) - 0.5).max() < 0.06
    assert not np.array_equal(m, balanced_in_mask(1000, 6, seed=2))


def test_digits_helpers(tmp_path):
    from mia_pruning.core import ArtifactCache
    from mia_pruning.data import load_dataset, make_splits
    from mia_pruning.models import build_model
    from mia_pruning.train import TrainConfig
    ds = load_dataset('digits')
    sp = make_splits(len(ds), seed=7, num_shadows=3)
    pop = population_indices(sp)
    assert len(pop) and not np.isin(pop, np.concatenate([s.train for s in sp.shadows] + [sp.victim.train])).any()
    cand = np.concatenate([sp.victim.train, sp.victim.test])
    cfg = TrainConfig(epochs=1, max_batches=2)
    refs, rin = train_reference_models(ds, 'mlp', cand, sp.shadows[0].dev, num_models=2, cfg=cfg, seed=1,
                                       cache=ArtifactCache(tmp_path), device='cpu')
    assert len(refs) == 2 and rin.shape == (len(cand), 2) and (rin.sum(1) == 1).all()
    with pytest.raises(ValueError, match='even'): train_reference_models(ds, 'mlp', cand, sp.shadows[0].dev, num_models=3)
    with pytest.raises(ValueError, match='also candidates'): train_reference_models(ds, 'mlp', cand, sp.victim.train[:5])
    shadows = [build_model('mlp', ds.num_classes, ds.input_shape) for _ in range(3)]
    sh = shadow_attack_data(shadows, ds, sp, extra_references=refs, population_idx=pop[:20], with_sensitivity=False, device='cpu')
    k1 = len(sp.shadows[0].train) + len(sp.shadows[0].test)
    assert sh.num_refs == 2 + 2 and sh.num_groups == 3 and sh.pop_py.shape == (3, 20)
    idx = sh.index[:k1]
    np.testing.assert_array_equal(sh.ref_in[:k1, 0], np.isin(idx, sp.shadows[1].train))
    np.testing.assert_array_equal(sh.ref_in[:k1, 1], np.isin(idx, sp.shadows[2].train))
    assert not sh.ref_in[:, 2:].any()
    assert sh.is_member[:len(sp.shadows[0].train)].all() and not sh.is_member[len(sp.shadows[0].train):k1].any()


def _release_pair(n, diff_gain, seed):
    "A dense release without membership signal and a pruned release whose change (not its level) carries it."
    from scipy.special import expit
    from mia_pruning.features import AttackData
    dense = synthetic_attack_data(n, shift=0.0, seed=seed)
    rng = np.random.default_rng(seed + 7)
    y = np.minimum(dense.labels, 1)
    as2 = lambda lsc: np.where(np.eye(2, dtype=bool)[y], expit(lsc)[:, None], 1 - expit(lsc)[:, None])
    lsc_p = dense.lsc - 0.5 + diff_gain * dense.is_member + rng.normal(0, 0.3, n)
    d = AttackData(probs=as2(dense.lsc), labels=y, is_member=dense.is_member, lsc=dense.lsc)
    return AttackData(probs=as2(lsc_p), labels=y, is_member=dense.is_member, lsc=lsc_p, other=d)


def test_two_release_beats_every_single_release_attack_when_the_change_carries_the_signal():
    sh, tg = _release_pair(4000, 1.0, 40), _release_pair(4000, 1.0, 41)
    two = run_attacks(['two_release'], sh, tg)['two_release'].metrics['auc']
    singles = [r.metrics['auc'] for r in run_attacks(['loss', 'top1_conf', 'conf'], sh, tg).values()]
    singles += [r.metrics['auc'] for r in run_attacks(['loss', 'top1_conf', 'conf'], sh.other, tg.other).values()]  # the dense release alone
    assert two > max(singles) + 0.05, (two, singles)
    null = run_attacks(['two_release'], _release_pair(4000, 0.0, 42), _release_pair(4000, 0.0, 43))['two_release'].metrics['auc']
    assert abs(null - 0.5) < 0.05, null  # no signal in the change: chance
    with pytest.raises(ValueError, match='AttackData.other'): run_attacks(['two_release'], sh.other, tg)
    with pytest.raises(ValueError, match='same 4000 records'): tg.with_other(synthetic_attack_data(10, seed=1))


SINGLE = ['loss', 'conf', 'top1_conf', 'lira_offline', 'rmia']  # every single-release attack these synthetic releases support


def _two_vs_singles(K, seed, **signal):
    "two_release's AUC and every single-release attack's, on either release, with K shadow pairs (K-1 overlapping references) vs K."
    from mia_pruning.attacks import synthetic_release_pair
    sh = synthetic_release_pair(3000, num_refs=K - 1, ref_in_frac=0.45, seed=seed, **signal)
    tg = synthetic_release_pair(3000, num_refs=K, seed=seed + 1, **signal)
    two = run_attacks(['two_release'], sh, tg)['two_release']
    singles = {f'{rel}/{n}': r.metrics['auc'] for rel, (s, t) in (('pruned', (sh, tg)), ('dense', (sh.other, tg.other)))
               for n, r in run_attacks(SINGLE, s, t).items()}
    return two, singles


@pytest.mark.parametrize('K', [2, 4])
def test_two_release_with_references_beats_every_single_release_attack_when_only_the_change_carries_the_signal(K):
    "The pruned release is the dense one plus a change that is larger for members: references blur it, the difference does not."
    two, singles = _two_vs_singles(K, 50, pruned_shift=1.0, shared=1.0)
    assert two.metrics['auc'] > max(singles.values()) + 0.1, (two.metrics['auc'], singles)
    assert {'lira_z_change', 'rmia_change', 'lsc_change'} <= set(two.info['features'])


@pytest.mark.parametrize('K', [2, 4])
@pytest.mark.parametrize('signal', [dict(pruned_shift=1.0), dict(dense_shift=1.0)])
def test_two_release_is_as_strong_as_the_best_single_release_attack_when_one_release_carries_the_signal(K, signal):
    "Independent dense and pruned models (shared=0), the signal in one of them: LiRA/RMIA on that release is the bar to reach."
    two, singles = _two_vs_singles(K, 60, shared=0.0, **signal)
    rel = 'pruned' if 'pruned_shift' in signal else 'dense'
    best = max(singles, key=singles.get)
    assert best.startswith(rel) and singles[best] > 0.65, singles  # the signal is where it was put, and strong
    assert two.metrics['auc'] >= singles[f'{rel}/rmia'] - 0.02 and two.metrics['auc'] >= singles[best] - 0.02, (two.metrics['auc'], singles)
    null, _ = _two_vs_singles(K, 70)
    assert abs(null.metrics['auc'] - 0.5) < 0.05
