"""The report: figures and markdown tables from summary.csv alone (plus one run's scores.npz for the divergence)."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mia_pruning import report as R
from mia_pruning.core import save_arrays, save_json
from mia_pruning.grid import collect
from mia_pruning.runs import finish_run

METHODS, SPARSITIES, ATTACKS = ['l1_unstructured', 'l2_structured'], [0.5, 0.7, 0.9], {'samia': 0.56, 'conf': 0.53, 'gap': 0.51}


def acc_of(attack, state, method, s, defense):
    "The known attack accuracy of the synthetic grid: pruning adds 0.1 x sparsity (x2 for l2), PPB brings it to 0.52."
    if state == 'dense': return ATTACKS[attack]
    if defense == 'ppb': return 0.52
    return ATTACKS[attack] + (0.2 if method == 'l2_structured' else 0.1) * s


def summary(seeds=(7,)):
    rows = []
    for seed in seeds:
        for m in METHODS:
            for s in SPARSITIES:
                for d in ['none', 'ppb']:
                    cid = f'c-{m}-{s}-{d}-{seed}'
                    for st in ['dense', 'pruned']:
                        for a in ATTACKS:
                            v = acc_of(a, st, m, s, d) + (seed - 7) * 0.01
                            rows.append(dict(dataset='digits', arch='cnn', prune_method=m, sparsity=s, defense=d,
                                             defense_param=-1.0 if d == 'none' else 4.0, seed=seed, num_shadows=3,
                                             shadow_prune_method=m, shadow_sparsity=s, adaptive=False, dense_shadows=False,
                                             model_state=st, attack=a, attack_acc=v, auc=v + 0.05, tpr_at_1pct_fpr=v / 10,
                                             tpr_at_0_1pct_fpr=v / 100, measured_sparsity=0.0 if st == 'dense' else s,
                                             test_acc=0.96 if st == 'dense' else 0.96 - s / 10 - 0.02 * (d == 'ppb'),
                                             train_acc=1.0, cell_id=cid, empirical_epsilon=0.05 * (st == 'pruned'),
                                             empirical_epsilon_delta=1e-3))
    return pd.DataFrame(rows)


@pytest.fixture
def grid_dir(tmp_path):
    out = tmp_path / 'g'
    out.mkdir()
    summary().to_csv(out / 'summary.csv', index=False)
    rng = np.random.default_rng(0)
    arrays = {}
    for st, shift in (('dense', 0.0), ('pruned', 0.2)):
        m = np.arange(300) < 150
        arrays.update({f'{st}__is_member': m, f'{st}__labels': np.arange(300) % 3,
                       f'{st}__py': np.clip(rng.uniform(0.3, 0.8, 300) + shift * m, 0, 1),
                       f'{st}__sy': rng.uniform(0, 1, 300), f'{st}__index': np.arange(300)})
        arrays[f'{st}__score__conf'] = arrays[f'{st}__py']
    arrays['pruned__score__two_release'] = arrays['pruned__py'] - arrays['dense__py']  # the change pruning made: its signal
    for st in ('dense', 'pruned'): arrays[f'{st}__score__rmia'] = arrays[f'{st}__py'] + rng.normal(0, 0.05, 300)  # an input of two_release: its bar
    run = out / 'runs' / 'c-l1_unstructured-0.7-none-7'
    save_arrays(run / 'scores.npz', **arrays)
    save_json(run / 'params.json', {'params': dict(dataset='digits', arch='cnn', prune_method='l1_unstructured', sparsity=0.7,
                                                   defense='none', adaptive=False, seed=7, subsample=0), 'provenance': {'cell_id': run.name}})
    from mia_pruning.metrics import membership_metrics
    rows = [{'model_state': st, 'attack': 'conf', 'auc': membership_metrics(arrays[f'{st}__score__conf'], arrays[f'{st}__is_member'])['auc']}
            for st in ('dense', 'pruned')]  # the run's summary rows, as the pipeline writes them (the exposure page picks its attack by them)
    save_json(run / 'rows.json', rows); save_json(run / 'metrics.json', {})
    finish_run(run, notebook=False)  # a complete run: the per-sample analyses read only those
    return out


def test_make_report_writes_every_figure_and_table(grid_dir):
    res = R.make_report(grid_dir)
    assert res['skipped'] == {}, res['skipped']
    figs = sorted(p.name for p in (grid_dir / 'figures').iterdir())
    assert figs == ['attack_vs_sparsity_digits_cnn.png', 'attacks_digits_cnn.png', 'defense_frontier_digits_cnn.png', 'divergence.png', 'headline_digits_cnn.png', 'roc.png']
    for f in figs:
        with Image.open(grid_dir / 'figures' / f) as im: assert im.size[0] > 300 and im.size[1] > 200
    tabs = sorted(p.name for p in (grid_dir / 'tables').iterdir())
    assert tabs == ['attack_accuracy.md', 'attack_summary.md', 'defenses.md', 'epsilon.md', 'test_accuracy.md', 'two_release.md']
    # a second report replaces the files in place and leaves no temporary file behind
    R.make_report(grid_dir)
    assert sorted(p.name for p in (grid_dir / 'figures').iterdir()) == figs
    assert not [p for p in grid_dir.rglob('*') if p.name.startswith('.')]


def test_tables_hold_the_known_numbers(grid_dir):
    R.make_report(grid_dir)
    att = (grid_dir / 'tables' / 'attack_accuracy.md').read_text()
    # l2_structured at 0.9, undefended: samia 0.56 -> 0.74, gap 0.51 -> 0.69, conf 0.53 -> 0.71; test acc 0.96 -> 0.87
    assert '| l2_structured | 0.9 | none | 0.900 | 0.960 | 0.870 | 0.560 → 0.740 | 0.510 → 0.690 | 0.530 → 0.710 |' in att
    assert '| l1_unstructured | 0.5 | ppb (4) | 0.500 | 0.960 | 0.890 | 0.560 → 0.520 |' in att
    assert att.startswith('### digits / cnn (3 shadows)')
    acc = (grid_dir / 'tables' / 'test_accuracy.md').read_text()
    assert '| digits | cnn | l1_unstructured | 0.7 | none | 0.700 | 1.000 | 1.000 | 0.960 | 0.890 | -0.070 |' in acc
    s = R.attack_summary(summary()).set_index('attack')
    assert list(s.index) == ['samia', 'gap', 'conf']  # SAMIA first, then the study's baselines in its order
    assert s.loc['samia', 'attack_acc pruned'] == pytest.approx(0.56 + np.mean([0.1 * x for x in SPARSITIES] + [0.2 * x for x in SPARSITIES]))
    assert s.loc['conf', 'attack_acc dense'] == pytest.approx(0.53)
    d = R.defense_table(summary())
    r = d[(d.prune_method == 'l2_structured') & (d.sparsity == 0.9) & (d.defense == 'ppb')].iloc[0]
    assert r.attack_acc == pytest.approx(0.52) and r.attack_acc_change == pytest.approx(0.52 - 0.74)
    assert r.test_acc_change == pytest.approx(-0.02)


def test_sparsity_figure_draws_the_data():
    fig = R.plot_vs_sparsity(summary())
    assert len(fig.axes) == 2 * 2  # two metrics x two methods
    ax = fig.axes[1]  # attack accuracy, l2_structured
    lines = {l.get_label(): l for l in ax.lines}
    assert np.allclose(lines['samia'].get_xdata(), SPARSITIES)
    assert np.allclose(lines['samia'].get_ydata(), [0.56 + 0.2 * s for s in SPARSITIES])
    dense = [l for l in ax.lines if l.get_linestyle() == '--']
    assert sorted(round(l.get_ydata()[0], 6) for l in dense) == sorted(ATTACKS.values())  # dense reference lines
    fig2 = R.plot_vs_sparsity(summary(seeds=(7, 8)), attacks=['conf'])  # two seeds: mean line
    assert np.allclose(fig2.axes[0].lines[0].get_ydata(), [0.53 + 0.1 * s + 0.005 for s in SPARSITIES])


def test_choices_of_cells():
    assert R.frontier_group(summary()) == ('l1_unstructured', 0.7)  # the study's reference setting wins the tie
    assert R.divergence_cell(summary()) == 'c-l1_unstructured-0.7-none-7'
    only = summary()
    only = only[~((only.prune_method == 'l1_unstructured') & (only.sparsity == 0.7))]
    assert R.divergence_cell(only) == 'c-l1_unstructured-0.9-none-7'  # nearest to 0.7, higher on ties


def test_bad_input(tmp_path, grid_dir):
    with pytest.raises(FileNotFoundError, match='no summary table'): R.make_report(tmp_path / 'nothing')
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['attack'\]"): R.load_summary(summary().drop(columns='attack'))
    with pytest.raises(ValueError, match="unknown model_state"): R.load_summary(summary().replace({'model_state': {'dense': 'original'}}))
    with pytest.raises(ValueError, match='several settings'): R.plot_vs_sparsity(pd.concat([summary(), summary().assign(dataset='svhn')]))
    with pytest.raises(ValueError, match="cell 'nope' is not in"): R.make_report(grid_dir, cell='nope')
    assert not (grid_dir / 'figures').exists()  # refused before drawing anything
    empty = tmp_path / 'empty'; empty.mkdir()
    summary().iloc[:0].to_csv(empty / 'summary.csv', index=False)
    with pytest.raises(ValueError, match='no rows'): R.make_report(empty)


def test_missing_pieces_are_reported_not_hidden(tmp_path):
    out = tmp_path / 'g'; out.mkdir()
    summary()[lambda d: d.defense == 'none'].to_csv(out / 'summary.csv', index=False)
    res = R.make_report(out)
    assert set(res['skipped']) == {'defense_frontier_digits_cnn', 'divergence', 'roc', 'defenses'}
    assert 'scores.npz' in res['skipped']['divergence']


def test_report_reads_collected_run_folders_and_never_runs_a_model(tmp_path, monkeypatch):
    import torch
    def boom(*a, **k): raise AssertionError('the report ran a model')
    monkeypatch.setattr(torch.nn.Module, '__call__', boom)  # any forward pass (training, features, attacks) fails
    monkeypatch.setattr(torch.autograd, 'backward', boom)
    # run folders as the pipeline writes them -> collect -> report
    out = tmp_path / 'g'
    for cid, g in summary().groupby('cell_id'):
        rd = out / 'runs' / cid
        params = g.iloc[0][['dataset', 'arch', 'prune_method', 'sparsity', 'defense', 'defense_param', 'seed', 'num_shadows',
                            'adaptive', 'dense_shadows']].to_dict()
        save_json(rd / 'rows.json', g.drop(columns=list(params) + ['cell_id']).to_dict('records'))
        save_json(rd / 'metrics.json', {})
        save_json(rd / 'params.json', {'params': params, 'provenance': {'cell_id': cid}})
        save_arrays(rd / 'scores.npz', dense__py=np.ones(2))
        finish_run(rd, notebook=False)
    df = collect(out)
    res = R.make_report(out)
    assert len(df) == len(summary()) and set(res['skipped']) == {'divergence', 'roc', 'exposure', 'two_release'}  # their scores.npz hold no per-sample scores
    key = ['cell_id', 'model_state', 'attack']
    pd.testing.assert_frame_equal(
        pd.read_csv(out / 'summary.csv')[key + ['attack_acc']].sort_values(key).reset_index(drop=True),
        summary()[key + ['attack_acc']].sort_values(key).reset_index(drop=True))


def test_report_module_imports_without_torch():
    "Reading and drawing a summary needs no model: importing the report must not pull in torch (issue 10, item 6)."
    import subprocess, sys
    code = "import sys, mia_pruning.report; assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)[:5]"
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_make_report_from_summary_csv_runs_without_torch(tmp_path):
    "Every figure and table drawn from summary.csv alone (no run folders: the per-sample pages need the data pool, hence torch)."
    import subprocess, sys
    grid_dir = tmp_path / 'g'; grid_dir.mkdir()
    summary().to_csv(grid_dir / 'summary.csv', index=False)
    code = (f"import sys; from mia_pruning.report import make_report; r = make_report({str(grid_dir)!r}); assert len(r['written']) >= 7, r\n"
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'torch'); assert not loaded, loaded[:5]")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_families_agree_with_the_attack_registry():
    "report.FAMILIES stays a literal (the report imports no torch, the attack registry does); it must say what each attack's registry entry says."
    from mia_pruning.attacks import ATTACKS
    view = {}
    for name, a in ATTACKS.items():
        if getattr(a, 'family', None): view.setdefault(a.family, []).append(name)
    assert R.FAMILIES == view
