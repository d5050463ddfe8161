"""The multi-release adversary: records through several releases (AttackData.others), the attack that reads them all, its
known answer on a simulation where every release carries a weak member signal, and the report's paired comparison."""
from dataclasses import replace
import numpy as np
import pytest
from mia_pruning.attacks import (ATTACKS, AttackData, multi_release_features, resolve_attacks, run_attacks, synthetic_attack_data,
                                 synthetic_release_pair, synthetic_releases, two_release_features)
from mia_pruning.evidence import paired_change, random_effects

RELEASES = ['dense', 'sparsity_0.5', 'sparsity_0.6', 'sparsity_0.7', 'sparsity_0.8']  # before the attacked one


def _sides(gain, K=4, seed=70, n=3000, names=RELEASES):
    kw = dict(shifts=(gain,) * (len(names) + 1), names=names, shared=0.0)
    return (synthetic_releases(n, num_refs=K - 1, ref_in_frac=0.45, seed=seed, **kw), synthetic_releases(n, num_refs=K, seed=seed + 1, **kw))


def _pair(d, name): return replace(d, other=d.releases[name], others=(), release_names=())


def test_with_others_checks_each_release_and_travels_with_subset_and_concat():
    base = synthetic_attack_data(300, num_refs=2, num_pop=50, seed=1)
    rel = {k: synthetic_attack_data(300, shift=s, num_refs=2, num_pop=50, seed=1) for k, s in (('dense', 3.0), ('s0.5', 2.0))}
    d = base.with_others(rel)
    assert d.release_names == ('dense', 's0.5') and d.releases['s0.5'] is rel['s0.5'] and d.other is None
    with pytest.raises(ValueError, match="release 'dense' must hold the same 300 records"): d.with_others({'dense': base.subset(np.arange(10))})
    with pytest.raises(ValueError, match='membership'): d.with_others({'x': replace(base, is_member=~base.is_member)})
    with pytest.raises(ValueError, match='non-empty string'): d.with_others({'': base})
    with pytest.raises(ValueError, match='own name'): replace(base, others=(base, base), release_names=('a', 'a'))
    sub = d.subset(base.is_member)
    np.testing.assert_array_equal(sub.releases['dense'].lsc, rel['dense'].lsc[base.is_member])
    pooled = AttackData.concat([d, d])
    assert len(pooled.releases['s0.5']) == 600 and pooled.releases['s0.5'].num_groups == 2
    with pytest.raises(ValueError, match='different other releases'): AttackData.concat([d, synthetic_attack_data(300, num_refs=2, num_pop=50, seed=1)])
    pair = synthetic_release_pair(200, seed=2)  # the two-release record is what it was: `.other`, no `.others`
    assert pair.other is not None and pair.others == () and 'releases' not in repr(pair)
    assert "releases=['dense', 's0.5']" in repr(d)


def test_multi_release_features_of_one_other_release_are_two_release_features():
    "Given only the dense release, the shared block builder gives two_release's columns (attacked = pruned)."
    sh, tg = synthetic_release_pair(1500, num_refs=2, ref_in_frac=0.45, pruned_shift=1.0, seed=3), synthetic_release_pair(1500, num_refs=3, seed=4)
    two = two_release_features(sh, tg)
    multi = multi_release_features(replace(sh, others=(sh.other,), release_names=('dense',)), replace(tg, others=(tg.other,), release_names=('dense',)))
    rename = {n.replace('_attacked', '_pruned').replace('_change_pruned', '_change'): j for j, n in enumerate(multi.names)}
    assert sorted(rename) == sorted(two.names)
    for j, n in enumerate(two.names):
        np.testing.assert_array_equal(two.shadow[:, j], multi.shadow[:, rename[n]])
        np.testing.assert_array_equal(two.target[:, j], multi.target[:, rename[n]])
    assert multi.lira_sd == {'attacked': two.lira_sd['pruned'], 'dense': two.lira_sd['dense']}


def test_multi_release_beats_every_pair_which_beats_every_single_release():
    "Known answer: each of 6 releases adds 0.7 to members' confidence under its own noise; only all together reveal it well."
    sh, tg = _sides(0.7)
    multi = run_attacks(['multi_release'], sh, tg)['multi_release']
    two = {k: run_attacks(['two_release'], _pair(sh, k), _pair(tg, k))['two_release'].metrics['auc'] for k in RELEASES}
    single = [r.metrics['auc'] for r in run_attacks(['lira_offline', 'rmia', 'loss'], sh, tg).values()]
    for k in RELEASES: single += [r.metrics['auc'] for r in run_attacks(['lira_offline', 'rmia'], sh.releases[k], tg.releases[k]).values()]
    auc = multi.metrics['auc']
    assert auc > max(two.values()) + 0.06 and max(two.values()) > max(single) + 0.03, (auc, two, max(single))
    assert multi.info['releases'] == ['attacked'] + RELEASES and len(multi.info['features']) == 3 * (6 + 5)
    null = run_attacks(['multi_release'], *_sides(0.0, seed=80))['multi_release'].metrics['auc']
    assert abs(null - 0.5) < 0.03, null


def test_multi_release_requirements_and_all():
    sh, tg = _sides(0.0, K=2, n=600, names=['dense', 's0.5'])
    assert ATTACKS['multi_release'].kind == 'multi_release' and ATTACKS['multi_release'].several_releases
    assert 'multi_release' not in resolve_attacks('all') and resolve_attacks('all', releases=True) == [n for n, a in ATTACKS.items() if not a.ablation]
    with pytest.raises(ValueError, match='at least 2 other releases'):
        run_attacks(['multi_release'], replace(sh, others=sh.others[:1], release_names=('dense',)), tg)
    with pytest.raises(ValueError, match='same other releases'):
        run_attacks(['multi_release'], sh, replace(tg, release_names=('dense', 's0.9')))
    with pytest.raises(ValueError, match="'attacked' names the attacked release"):
        run_attacks(['multi_release'], replace(sh, release_names=('dense', 'attacked')), replace(tg, release_names=('dense', 'attacked')))
    with pytest.raises(ValueError, match='AttackData.others on the target side'):
        multi_release_features(sh, replace(tg, others=(), release_names=()))
    # 'all' runs multi_release exactly where the records carry other releases (two_release where they carry `.other`)
    s0, t0 = (synthetic_attack_data(400, num_refs=4, num_pop=200, seed=s) for s in (5, 6))
    plain = run_attacks('all', s0, t0, epochs=1)
    assert 'multi_release' not in plain and 'two_release' not in plain
    rel = lambda s: {k: synthetic_attack_data(400, shift=g, num_refs=4, num_pop=200, seed=s) for k, g in (('dense', 3.0), ('s0.5', 2.0))}
    both = run_attacks('all', replace(s0).with_others(rel(5)), replace(t0).with_others(rel(6)), epochs=1)
    assert list(both) == [n for n, a in ATTACKS.items() if n != 'two_release' and not a.ablation]


def _write_runs(root, cells):
    from mia_pruning.core import save_arrays, save_json
    from mia_pruning.runs import finish_run
    for cid, prm, arr in cells:
        run = root / 'runs' / cid
        save_arrays(run / 'scores.npz', **arr)
        save_json(run / 'params.json', {'params': prm, 'provenance': {'cell_id': cid}})
        save_json(run / 'rows.json', []); save_json(run / 'metrics.json', {})
        finish_run(run, notebook=False)


def test_release_table_pairs_seeds_and_combines_them_by_random_effects(tmp_path):
    from mia_pruning.report import release_table, two_release_table
    rng = np.random.default_rng(3)
    cells, arrays = [], {}
    for sp, gains in ((0.9, dict(lira_offline=0.4, rmia=0.2, two_release=0.7, multi_release=1.2)),
                      (0.5, dict(lira_offline=0.3, rmia=0.3, multi_release=0.3))):  # 0.5: no two_release scores, multi no better
        for s in range(3):
            m = rng.permutation(np.arange(800) < 400)
            arr = {'pruned__is_member': m, 'dense__is_member': m, 'dense__score__loss': rng.normal(0.1 * m, 1),
                   **{f'pruned__score__{a}': rng.normal(g * m, 1) for a, g in gains.items()}}
            prm = dict(dataset='digits', arch='cnn', prune_method='l1_unstructured', sparsity=sp, defense='none', adaptive=False, seed=s)
            cells.append((f'c{sp}-{s}', prm, arr)); arrays[(sp, s)] = arr
    _write_runs(tmp_path, cells)
    (tmp_path / 'runs' / 'unfinished').mkdir()  # no completion record: not read
    with pytest.warns(UserWarning, match='unfinished'): t = release_table(tmp_path)
    assert 'releases' not in t  # no cell has a `releases` parameter
    hi = t[t.sparsity == 0.9].set_index('comparison')
    assert list(hi.index) == ['two_release - single', 'multi_release - single', 'multi_release - two_release']
    assert (hi.verdict == 'raised').all() and (hi.seeds == 3).all() and hi.loc['two_release - single', 'a'] == 'lira_offline'
    per = [paired_change(arrays[(0.9, s)]['pruned__score__lira_offline'], arrays[(0.9, s)]['pruned__score__multi_release'],
                         arrays[(0.9, s)]['pruned__is_member']) for s in range(3)]
    r = random_effects([p['diff'] for p in per], [p['se'] for p in per])
    assert hi.loc['multi_release - single', ['change', 'lo', 'hi']].tolist() == pytest.approx([r['estimate'], r['lo'], r['hi']])
    assert hi.loc['multi_release - single', 'interval'] == 'random effects, t(2)'
    lo = t[t.sparsity == 0.5]
    assert list(lo.comparison) == ['multi_release - single'] and lo.verdict.iloc[0] in ('inconclusive', 'no change within the margin')
    with pytest.warns(UserWarning, match='unfinished'): two = two_release_table(tmp_path)  # reads the same runs; multi_release is never taken for a single-release attack
    assert len(two) == 1 and two.best_input[0] == 'pruned:lira_offline' and two.verdict[0] == 'raised'
    prm = dict(cells[0][1], releases='0.5,0.7,0.9')
    one = release_table([(prm, arrays[(0.9, 0)])])
    assert (one.releases == '0.5,0.7,0.9').all() and (one.interval == 'members only (1 seed)').all()
    with pytest.raises(ValueError, match='no run'): release_table([(prm, {'pruned__is_member': arrays[(0.9, 0)]['pruned__is_member']})])


# ---- the cell parameter `releases`: planned with the grid's planner, ids unchanged without it ----
from mia_pruning import pipeline as P

CELL = dict(dataset='digits', arch='mlp', epochs=3, num_shadows=2, sparsity=0.7, num_references=0, n_boot=0, threads=1,
            attacks='conf,lira_offline,rmia,two_release,multi_release', releases='0.9, 0.5')


def test_releases_are_validated_before_any_work_and_spelled_one_way():
    v = P.validate_params(CELL)
    assert v['releases'] == '0.5,0.9' and P.cell_id(CELL) == P.cell_id({**CELL, 'releases': '0.5,0.9'})
    for bad, msg in (('0.7', "cell's own sparsity"), ('x', 'comma-separated'), ('0.5,0.5', 'twice'), ('1.5', "releases '1.5'")):
        with pytest.raises(ValueError, match=msg): P.validate_params({**CELL, 'releases': bad})
    with pytest.raises(ValueError, match='releases'): P.validate_params({**CELL, 'releases': ''})  # multi_release named, no releases
    with pytest.raises(ValueError, match='read only by the multi_release'): P.validate_params({**CELL, 'attacks': 'conf'})  # models for nothing
    with pytest.raises(ValueError, match='dense_shadows'): P.validate_params({**CELL, 'attacks': 'all', 'dense_shadows': True})
    plain = {k: v for k, v in CELL.items() if k != 'releases'} | {'attacks': 'all'}
    assert 'multi_release' not in P.resolve_params(plain)['attacks'].split(',')  # 'all' without releases: today's attacks, today's id
    assert 'multi_release' in P.resolve_params({**plain, 'releases': '0.5'})['attacks'].split(',')


def test_a_cell_with_releases_plans_the_pruned_models_of_the_cells_at_those_sparsities():
    jobs = {j.key for j in P.cell_models(CELL)}
    for s in (0.5, 0.9):
        other = {k: v for k, v in CELL.items() if k != 'releases'} | {'sparsity': s, 'attacks': 'conf'}
        assert {j.key for j in P.cell_models(other) if j.kind == 'pruned'} <= jobs
    assert len(jobs) == len(P.cell_models({**CELL, 'releases': '0.5'})) + 3  # one more release: victim and 2 shadows


def test_a_cell_loads_exactly_the_release_models_its_plan_built(tmp_path):
    cache = tmp_path / 'cache'
    for job in P.cell_models(CELL): P.build_model_job(job, cache, threads=1)
    r = P.run_cell(progress=False, cache_dir=str(cache), **CELL)
    assert all(m['built'] == 0 for m in r.provenance['models'].values()), r.provenance['models']  # nothing trained: the plan had it all
    m = r.scores['pruned__is_member']
    assert np.isfinite(r.scores['pruned__score__multi_release']).all() and len(r.scores['pruned__score__multi_release']) == len(m)
    assert 'dense__score__multi_release' not in r.scores and 0.0 <= r.metrics['pruned/multi_release/auc'] <= 1.0
