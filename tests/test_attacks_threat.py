"The threat model in one place: mia_pruning.threat gives the same masks, splits and seeds as the code it replaced."
import numpy as np
import pytest
from mia_pruning.data import Split, get_splits
from mia_pruning.threat import (balanced_in_mask, candidate_splits, in_mask_seed, population_indices, reference_seed,
                                reference_splits, role_seed, shadow_ref_in, shadow_seed, victim_ref_in)


# --- the implementations before the move, frozen here as the reference -------------------------------------------
def old_balanced_in_mask(n, num_models, seed=0):
    rng = np.random.default_rng(seed)
    ranks = np.argsort(np.argsort(rng.random((n, num_models)), axis=1), axis=1)
    return ranks < num_models // 2

def old_pipeline_reference_splits(splits, num_models, seed):  # pipeline.reference_splits
    cand = np.sort(np.concatenate([splits.victim.train, splits.victim.test]))
    in_mask = old_balanced_in_mask(len(cand), num_models, seed + 10_007)
    return in_mask, [Split(cand[m], splits.shadows[0].dev, cand[~m]) for m in in_mask.T]

def old_train_reference_splits(cand, dev_idx, num_models, seed):  # the splits inside attacks.train_reference_models
    cand = np.asarray(cand, np.int64)
    in_mask = old_balanced_in_mask(len(cand), num_models, seed + 10_007)
    return in_mask, [Split(np.sort(cand[in_mask[:, r]]), np.asarray(dev_idx, np.int64), np.sort(cand[~in_mask[:, r]]))
                     for r in range(num_models)]

def old_shadow_rin(splits, k, n_extra):  # inside attacks.shadow_attack_data
    sp = splits.shadows[k]
    others = [j for j in range(len(splits.shadows)) if j != k]
    idx = np.concatenate([sp.train, sp.test])
    rin = np.zeros((len(idx), len(others) + n_extra), bool)
    for c, j in enumerate(others): rin[:, c] = np.isin(idx, splits.shadows[j].train)
    return rin

def old_victim_rin(splits, ref_masks, R):  # inside pipeline._state_attacks
    v = splits.victim
    idx = np.concatenate([v.train, v.test])
    cand = np.sort(np.concatenate([v.train, v.test]))
    pos = np.searchsorted(cand, idx)
    return np.concatenate([splits.shadow_membership(idx).T, ref_masks[pos] if R else np.zeros((len(idx), 0), bool)], 1)

def old_population(splits, cap=None, seed=0):
    pool = np.unique(np.concatenate([np.concatenate([s.train, s.dev, s.test]) for s in splits.shadows]))
    pop = np.setdiff1d(pool, np.concatenate([s.train for s in splits.shadows]))
    if cap is not None and len(pop) > cap: pop = np.sort(np.random.default_rng(seed).choice(pop, cap, replace=False))
    return pop


def _same_splits(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for f in ('train', 'dev', 'test'): np.testing.assert_array_equal(getattr(x, f), getattr(y, f))


@pytest.mark.parametrize('seed,K,R', [(7, 3, 4), (0, 2, 2), (11, 5, 8)])
def test_threat_equals_old_implementation(seed, K, R):
    sp = get_splits('digits', 1797, seed, K)
    m_new, s_new = reference_splits(sp, R, seed)
    m_old, s_old = old_pipeline_reference_splits(sp, R, seed)
    np.testing.assert_array_equal(m_new, m_old); _same_splits(s_new, s_old)
    cand = np.concatenate([sp.victim.train, sp.victim.test])  # unsorted, as 06_attacks passes them
    m_new, s_new = candidate_splits(cand, sp.shadows[0].dev, R, seed)
    m_old, s_old = old_train_reference_splits(cand, sp.shadows[0].dev, R, seed)
    np.testing.assert_array_equal(m_new, m_old); _same_splits(s_new, s_old)
    for k in range(K): np.testing.assert_array_equal(shadow_ref_in(sp, k, R), old_shadow_rin(sp, k, R))
    m, _ = reference_splits(sp, R, seed)
    idx = np.concatenate([sp.victim.train, sp.victim.test])
    np.testing.assert_array_equal(victim_ref_in(sp, idx, m), old_victim_rin(sp, m, R))
    np.testing.assert_array_equal(victim_ref_in(sp, idx, None), old_victim_rin(sp, None, 0))
    for cap in (None, 50): np.testing.assert_array_equal(population_indices(sp, cap, seed), old_population(sp, cap, seed))
    np.testing.assert_array_equal(balanced_in_mask(100, R, seed), old_balanced_in_mask(100, R, seed))


def test_seeds_and_design():
    assert [shadow_seed(7, k) for k in range(3)] == [8, 9, 10] and reference_seed(7, 2) == 110 and in_mask_seed(7) == 10_014
    assert role_seed(7, 'victim') == 7 and role_seed(7, 'shadow4') == 12 and role_seed(7, 'reference0') == 108
    with pytest.raises(ValueError, match='unknown role'): role_seed(7, 'teacher')
    sp = get_splits('digits', 1797, 7, 2)
    m, refs = reference_splits(sp, 6, 7)
    assert (m.sum(1) == 3).all()  # each candidate IN for exactly R/2
    for r, s in enumerate(refs):
        assert len(np.intersect1d(s.train, s.test)) == 0 and len(s.train) + len(s.test) == len(m)
        assert len(np.intersect1d(s.dev, np.concatenate([s.train, s.test]))) == 0
    with pytest.raises(ValueError, match='even number'): reference_splits(sp, 5, 7)
    with pytest.raises(ValueError, match='dev samples are also candidates'):
        candidate_splits(sp.victim.train, sp.victim.train[:3], 2, 7)
    # the population never overlaps any shadow's training set nor the victim's candidates
    pop = population_indices(sp)
    assert not np.isin(pop, np.concatenate([s.train for s in sp.shadows] + [sp.victim.train, sp.victim.test])).any()
