"Learned attacks trained as the study trains them, that report whether they learned; the tuned recipe; QMIA."
import math
import numpy as np
import pytest
import torch
import torch.nn as nn
from mia_pruning.attacks import (ATTACKS, ATTACK_RECIPES, SAMIA, AttackMLP, attack_milestones, balanced_accuracy_interval,
                                 lsc_from_py, qmia_min_population, run_attacks, stratified_holdout, synthetic_attack_data,
                                 train_attack_model)

FAST = {'nn': {'lr': 0.05}, 'nn_cls': {'lr': 0.05}}


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _xavier_std(layer: nn.Linear) -> float: return math.sqrt(2 / (layer.in_features + layer.out_features))


def test_attack_models_are_xavier_initialised():
    torch.manual_seed(0)
    mlp = AttackMLP(300)
    for layer in [m for m in mlp if isinstance(m, nn.Linear)][:3]:  # 300x512, 512x256, 256x128: >= 32k weights each
        assert layer.weight.std().item() == pytest.approx(_xavier_std(layer), rel=0.03)
        assert layer.weight.mean().abs().item() < 0.1 * _xavier_std(layer)
        assert (layer.bias == 0).all()
    # PyTorch's default (kaiming-uniform, a=sqrt(5)) has std 1/sqrt(3 fan_in): for 300 -> 512 that is 0.033, not 0.048
    assert abs(1 / math.sqrt(3 * 300) - _xavier_std(mlp[0])) > 0.01
    s = SAMIA(10)
    lin = [m for m in s.modules() if isinstance(m, nn.Linear)]
    assert len(lin) == 1 + 3 * 3 + 2  # embed; per encoder layer: attention out_proj, linear1, linear2; head: 2
    assert all((m.bias == 0).all() for m in lin)
    big = s.head[1]  # Linear(640, 64): 40,960 weights
    assert big.weight.std().item() == pytest.approx(_xavier_std(big), rel=0.03)
    ff = s.encoder.layers[0].linear1  # Linear(64, 128)
    assert ff.weight.std().item() == pytest.approx(_xavier_std(ff), rel=0.05)
    for norm in [s.norm] + [m for m in s.modules() if isinstance(m, nn.LayerNorm)]:
        assert (norm.weight == 1).all() and (norm.bias == 0).all()


def test_milestones_are_the_studys(monkeypatch):
    assert attack_milestones(3) == [1, 2] and attack_milestones(10) == [5, 7] and attack_milestones(100) == [50, 75]
    seen = []
    real = torch.optim.lr_scheduler.MultiStepLR
    def spy(opt, milestones, gamma): seen.append(list(milestones)); return real(opt, milestones, gamma)
    monkeypatch.setattr(torch.optim.lr_scheduler, 'MultiStepLR', spy)
    x, y = np.random.default_rng(0).normal(size=(64, 4)), np.arange(64) % 2
    train_attack_model(AttackMLP(4), x, y, epochs=10, device='cpu')
    train_attack_model(AttackMLP(4), x, y, epochs=3, device='cpu')
    assert seen == [[5, 7], [1, 2]]


def test_holdout_and_interval():
    y = np.r_[np.ones(300, bool), np.zeros(200, bool)]
    fit, held = stratified_holdout(y, 0.2, seed=1)
    assert len(np.intersect1d(fit, held)) == 0 and len(fit) + len(held) == 500
    assert y[held].sum() == 60 and (~y[held]).sum() == 40  # 20% of each side
    assert np.array_equal(held, stratified_holdout(y, 0.2, seed=1)[1]) and not np.array_equal(held, stratified_holdout(y, 0.2, seed=2)[1])
    acc, lo, hi = balanced_accuracy_interval(np.ones(500, bool), y)  # "everyone is a member": chance, interval around it
    assert acc == 0.5 and lo < 0.5
    acc, lo, hi = balanced_accuracy_interval(y, y)
    assert acc == 1.0 and lo > 0.95


def test_converged_flag_says_whether_an_attack_learned():
    sh, tg = synthetic_attack_data(1500, seed=10), synthetic_attack_data(600, seed=11)
    learned = run_attacks(['conf', 'nn_cls'], sh, tg, device='cpu', epochs=6, options={'nn_cls': FAST['nn_cls']})
    m = learned['nn_cls'].metrics
    assert m['converged'] is True and m['shadow_heldout_acc'] > 0.8 and m['shadow_train_acc'] > 0.8
    assert m['shadow_heldout_acc_lo'] > 0.5
    assert np.isnan(learned['conf'].metrics['converged'])  # threshold attacks train no model
    null_sh, null_tg = synthetic_attack_data(1500, shift=0, seed=12), synthetic_attack_data(600, shift=0, seed=13)
    null = run_attacks('nn', null_sh, null_tg, device='cpu', epochs=6, options={'nn': FAST['nn']})['nn'].metrics
    assert null['converged'] is False and null['shadow_heldout_acc_lo'] < 0.5
    # 'none' skips the check; 'split' trains the attack on the 80% only (a different model than 'refit')
    none = run_attacks('nn', null_sh, null_tg, device='cpu', epochs=2, attack_check='none')['nn'].metrics
    assert np.isnan(none['converged']) and np.isnan(none['shadow_heldout_acc'])
    split = run_attacks('nn', sh, tg, device='cpu', epochs=2, attack_check='split')['nn']
    refit = run_attacks('nn', sh, tg, device='cpu', epochs=2, attack_check='refit')['nn']
    assert split.metrics['shadow_heldout_acc'] == refit.metrics['shadow_heldout_acc']
    assert not np.array_equal(split.scores, refit.scores)
    with pytest.raises(ValueError, match="unknown attack_recipe 'fast'"): run_attacks('nn', sh, tg, attack_recipe='fast')
    with pytest.raises(ValueError, match='unknown attack_check'): run_attacks('nn', sh, tg, attack_check='cv')


def test_tuned_recipe_learns_where_the_studys_does_not():
    "A confident victim (p_y ~ 0.95): the signal hides in small posterior differences that SGD at lr 1e-3 never finds."
    kw = dict(base=3.0, shift=1.0)
    sh, tg = synthetic_attack_data(2400, seed=1, **kw), synthetic_attack_data(1600, seed=2, **kw)
    assert set(ATTACK_RECIPES) == {'study', 'tuned'} and ATTACK_RECIPES['study']['optimizer'] == 'sgd'
    study = run_attacks(['conf', 'nn_cls'], sh, tg, device='cpu', epochs=8, attack_check='split')
    tuned = run_attacks(['nn_cls'], sh, tg, device='cpu', epochs=8, attack_check='split', attack_recipe='tuned')
    conf, s_auc, t_auc = study['conf'].metrics['auc'], study['nn_cls'].metrics['auc'], tuned['nn_cls'].metrics['auc']
    assert s_auc < 0.56 and study['nn_cls'].metrics['converged'] is False
    assert t_auc > s_auc + 0.05 and t_auc >= conf - 0.02, (conf, s_auc, t_auc)
    assert tuned['nn_cls'].metrics['converged'] is True and tuned['nn_cls'].info['optimizer'] == 'adam'


def test_qmia_per_sample_quantile():
    sh = synthetic_attack_data(200, seed=30)  # QMIA never reads the shadow side
    tg = synthetic_attack_data(3000, shift=2.0, spread=2.0, num_pop=3000, input_dim=4, seed=31)
    assert ATTACKS['qmia'].kind == 'quantile'
    res = run_attacks(['qmia', 'top1_conf'], sh, tg, device='cpu')
    q = res['qmia']
    assert q.metrics['attack_fpr'] == pytest.approx(0.05, abs=0.03)  # its own FPR target (alpha = 0.05)
    assert q.metrics['attack_tpr'] > 0.6 and q.metrics['auc'] > res['top1_conf'].metrics['auc']
    assert q.info['features'] == 'one_hot(y) + inputs'
    np.testing.assert_array_equal(q.is_member_pred, q.scores > 0)
    strict = run_attacks('qmia', sh, tg, options={'qmia': {'alpha': 0.01}})['qmia'].metrics
    assert strict['attack_fpr'] < 0.03 and strict['attack_tpr'] < q.metrics['attack_tpr']
    # no signal: decisions at about alpha for members and non-members alike
    null = run_attacks('qmia', sh, synthetic_attack_data(3000, shift=0.0, num_pop=3000, input_dim=4, seed=32))['qmia'].metrics
    assert abs(null['auc'] - 0.5) < 0.04 and abs(null['attack_tpr'] - null['attack_fpr']) < 0.03
    # without inputs the regressor sees the label only (a per-class quantile)
    assert run_attacks('qmia', sh, synthetic_attack_data(600, num_pop=300, seed=33))['qmia'].info['features'] == 'one_hot(y)'
    with pytest.raises(ValueError, match='pop_labels'): run_attacks('qmia', sh, synthetic_attack_data(300, seed=34))
    with pytest.raises(ValueError, match='at least 100 population samples'):
        run_attacks('qmia', sh, synthetic_attack_data(300, num_pop=50, seed=35))
    with pytest.raises(ValueError, match='alpha must lie'): run_attacks('qmia', sh, tg, options={'qmia': {'alpha': 1.5}})
    assert qmia_min_population(0.05) == 100 and lsc_from_py(np.array([0.5]))[0] == 0.0


def test_run_attacks_reports_resolution_and_empirical_epsilon():
    from mia_pruning.metrics import empirical_epsilon
    sh, tg = synthetic_attack_data(600, seed=40), synthetic_attack_data(600, seed=41)
    res = run_attacks(['conf', 'loss'], sh, tg, device='cpu')
    for r in res.values():
        m = r.metrics
        assert m['fpr_floor'] == 1 / (~tg.is_member).sum() and np.isnan(m['tpr_at_0_1pct_fpr'])  # 300 non-members
        assert m['empirical_epsilon'] == empirical_epsilon(r.scores, tg.is_member)['epsilon'] > 0
        assert m['empirical_epsilon_delta'] == 0.0
        assert {'converged', 'shadow_train_acc', 'shadow_heldout_acc', 'shadow_heldout_acc_lo'} <= set(m)
    loose = run_attacks('loss', sh, tg, device='cpu', epsilon_delta=0.05)['loss'].metrics
    assert loose['empirical_epsilon'] < res['loss'].metrics['empirical_epsilon'] and loose['empirical_epsilon_delta'] == 0.05
    with pytest.raises(ValueError, match='epsilon_delta'): run_attacks('loss', sh, tg, epsilon_delta=1.0)


def test_tuned_recipe_leaves_samia_at_the_studys():
    from mia_pruning.attacks import recipe_for
    assert recipe_for('tuned', 'nn_cls')[0] == 'tuned' and recipe_for('tuned', 'samia') == ('study', ATTACK_RECIPES['study'])
    with pytest.raises(ValueError, match='unknown attack_recipe'): recipe_for('fast', 'nn')
    sh, tg = synthetic_attack_data(300, seed=60), synthetic_attack_data(200, seed=61)
    a = run_attacks('samia', sh, tg, device='cpu', epochs=1, attack_check='none')['samia']
    b = run_attacks('samia', sh, tg, device='cpu', epochs=1, attack_check='none', attack_recipe='tuned')['samia']
    np.testing.assert_array_equal(a.scores, b.scores); assert b.info['recipe'] == 'study'


def _fresh(build, seed=1):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed); return build()


@pytest.mark.parametrize('build,rows,bs', [(lambda: SAMIA(4), 129, 128), (lambda: AttackMLP(12), 300, 64)])
def test_training_loop_trains_the_plain_loops_weights(build, rows, bs):
    "The project's loop (one tensor, a seeded permutation, the loss read once per epoch) = the textbook DataLoader loop."
    from mia_pruning.attacks import plain_train_attack_model
    rng = np.random.default_rng(3)
    x, y = rng.random((rows, 12)).astype(np.float32), rng.integers(0, 2, rows)  # 129 rows: a final batch of one, dropped by both
    a, ha = train_attack_model(_fresh(build), x, y, epochs=3, batch_size=bs, seed=5, device='cpu')
    b, hb = plain_train_attack_model(_fresh(build), x, y, epochs=3, batch_size=bs, seed=5, device='cpu')
    for (k, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=k)
    np.testing.assert_allclose(ha, hb, rtol=1e-6)
    c, _ = train_attack_model(_fresh(build), x, y, epochs=3, batch_size=bs, seed=6, device='cpu')  # the check can fail: another seed moves the weights
    assert max((p - q).abs().max().item() for p, q in zip(a.parameters(), c.parameters())) > 1e-4
    assert not a.training and not b.training


def test_attack_auc_unchanged_on_a_fixed_benchmark():
    from mia_pruning.attacks import member_probability, nn_cls_features, plain_train_attack_model, samia_features
    from mia_pruning.metrics import membership_metrics
    for feat, build, shift, lr in ((samia_features, lambda: SAMIA(10), 2.0, 0.01), (nn_cls_features, lambda: AttackMLP(20), 3.0, 0.05)):
        sh, tg = synthetic_attack_data(1000, shift=shift, seed=80), synthetic_attack_data(600, shift=shift, seed=81)
        xs, xt = feat(sh), feat(tg)
        aucs = [membership_metrics(member_probability(fn(_fresh(build), xs, sh.is_member, epochs=4, lr=lr, seed=7, device='cpu')[0], xt),
                                   tg.is_member)['auc'] for fn in (train_attack_model, plain_train_attack_model)]
        assert 0.6 < aucs[0] < 0.99, aucs  # a known signal that the attack picks up, short of saturation
        assert abs(aucs[0] - aucs[1]) <= 0.005, aucs
