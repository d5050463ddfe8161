"`mia-pruning audit`: an executed notebook and audit.json for a toy pair, a known answer, and inputs refused before any training."
import json
import numpy as np
import pytest
import torch
from mia_pruning import audit as A
from mia_pruning.models import build_model


def _files(d, pair):
    "The toy pair as the command line takes it: two state dicts, members and population as .npz files."
    d.mkdir(parents=True, exist_ok=True)
    torch.save(pair['dense'], d / 'dense.pt'); torch.save(pair['pruned'], d / 'pruned.pt')
    for name in ('members', 'population'):
        x, y = pair[name]
        np.savez(d / f'{name}.npz', X=x, y=y)
    return d


@pytest.fixture
def no_training(monkeypatch):
    "Any attempt to train a reference model fails the test: refusals must come first."
    def boom(*a, **k): raise AssertionError('trained before refusing the inputs')
    monkeypatch.setattr(A, 'train_references', boom)


def test_cli_audit_of_a_toy_pair_writes_an_executed_notebook_and_audit_json(tmp_path, capsys):
    "The pruned release memorised its members (a known, larger leak): the audit finds it, with an interval above zero."
    d = _files(tmp_path / 'in', A.toy_pair(arch='mlp'))
    out = tmp_path / 'out'
    rc = A.main(['--dense', str(d / 'dense.pt'), '--pruned', str(d / 'pruned.pt'), '--arch', 'mlp', '--members', str(d / 'members.npz'),
                 '--population', str(d / 'population.npz'), '--out', str(out), '--references', '2', '--prune-method', 'l1_unstructured',
                 '--sparsity', '0.3'])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads((out / 'audit.json').read_text())
    rows = {r['attack']: r for r in summary['attacks']}
    assert set(rows) == {'conf', 'mentr', 'loss', 'lira_offline', 'rmia'}
    for r in rows.values():
        assert 0 <= r['auc_dense'] <= 1 and 0 <= r['auc_pruned'] <= 1 and r['auc_change_lo'] <= r['auc_change'] <= r['auc_change_hi']
        assert np.isnan(r['tpr_at_0_1pct_fpr_dense'])  # 150 non-members cannot resolve 0.1%
    assert rows['loss']['auc_pruned'] > rows['loss']['auc_dense'] + 0.05 and rows['loss']['auc_change_lo'] > 0
    assert summary['two_release'] is not None and 0 <= summary['two_release']['auc_two_release'] <= 1
    assert summary['setup']['num_references'] == 2 and 'i.i.d.' in summary['assumptions'][0]
    nb = json.loads((out / 'audit.ipynb').read_text())
    outs = [o for c in nb['cells'] if c['cell_type'] == 'code' for o in c.get('outputs', [])]
    assert outs and not [o for o in outs if o.get('output_type') == 'error']
    assert any('injected-parameters' in c['metadata'].get('tags', []) for c in nb['cells'])
    back = A.load_audit(out)
    assert back.attack_table().loc['loss', 'label'] == rows['loss']['label']


def test_a_checkpoint_that_does_not_fit_is_refused_before_training(tmp_path, capsys, no_training):
    pair = A.toy_pair(arch='mlp', memorise=False)
    d = _files(tmp_path, pair)
    torch.save(build_model('mlp', 4, (10,), seed=0).state_dict(), d / 'other.pt')  # a model for 10 input features
    rc = A.main(['--dense', str(d / 'dense.pt'), '--pruned', str(d / 'other.pt'), '--arch', 'mlp', '--members', str(d / 'members.npz'),
                 '--population', str(d / 'population.npz'), '--out', str(tmp_path / 'out')])
    err = capsys.readouterr().err
    assert rc == 2 and 'the pruned checkpoint does not fit' in err and '1.weight (256, 10) (expected (256, 20))' in err
    assert not (tmp_path / 'out' / 'audit.json').exists()
    with pytest.raises(ValueError, match='2 unexpected'):
        A.audit({**pair['dense'], 'extra.weight': torch.zeros(1), 'more.bias': torch.zeros(1)}, pair['pruned'], 'mlp', pair['members'], pair['population'])


def test_overlapping_members_and_population_are_refused_before_training(tmp_path, capsys, no_training):
    pair = A.toy_pair(arch='mlp', memorise=False)
    d = _files(tmp_path, pair)
    (xm, ym), (xp, yp) = pair['members'], pair['population']
    np.savez(d / 'leaky.npz', X=np.r_[xp, xm[:5]], y=np.r_[yp, ym[:5]])
    base = ['--dense', str(d / 'dense.pt'), '--pruned', str(d / 'pruned.pt'), '--arch', 'mlp', '--out', str(tmp_path / 'out')]
    assert A.main(base + ['--members', str(d / 'members.npz'), '--population', str(d / 'leaky.npz')]) == 2
    assert '5 population rows are identical to member rows' in capsys.readouterr().err
    np.save(d / 'mi.npy', np.arange(0, 300)); np.save(d / 'pi.npy', np.arange(290, 1500))  # built-in digits, 10 shared indices
    digits = ['--dense', str(d / 'dense.pt'), '--pruned', str(d / 'pruned.pt'), '--arch', 'mlp', '--out', str(tmp_path / 'out'), '--dataset', 'digits']
    assert A.main(digits + ['--members', str(d / 'mi.npy'), '--population', str(d / 'pi.npy')]) == 2
    assert '10 indices are in both the members and the population' in capsys.readouterr().err


def test_too_small_a_population_and_unusable_attacks_are_refused(no_training):
    pair = A.toy_pair(arch='mlp', memorise=False)
    xp, yp = pair['population']
    with pytest.raises(ValueError, match='the population has 100 samples; the audit of 150 members with 4 reference models needs at least'):
        A.audit(pair['dense'], pair['pruned'], 'mlp', pair['members'], (xp[:100], yp[:100]), num_references=4)
    with pytest.raises(ValueError, match='lira_online'):
        A.audit(pair['dense'], pair['pruned'], 'mlp', pair['members'], pair['population'], attacks=('loss', 'lira_online'))
    with pytest.raises(ValueError, match='returned a str'):
        A.audit(pair['dense'], pair['pruned'], lambda C, shape: 'mlp', pair['members'], pair['population'])
