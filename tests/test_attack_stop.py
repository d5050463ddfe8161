"attack_stop='heldout': learned attacks stop early on the held-out shadow loss and release the best epoch's weights (issue 26 item 4)."
import numpy as np, pytest, torch
from mia_pruning.attacks import AttackMLP, train_attack_model, _heldout_loss, run_attacks
from mia_pruning import pipeline as P


def _mlp(d):  # the same initial weights every time
    torch.manual_seed(0); return AttackMLP(d)


def _noise(n, d, seed):  # membership independent of the features: the held-out loss cannot keep falling
    g = np.random.default_rng(seed)
    return g.normal(size=(n, d)).astype(np.float32), g.integers(0, 2, n)


def test_early_stopping_stops_and_returns_the_best_epoch():
    x, y = _noise(600, 8, 0)
    xv, yv = _noise(200, 8, 1)
    stopped, hist = train_attack_model(_mlp(8), x, y, epochs=60, lr=0.05, optimizer='adam', seed=0, device='cpu',
                                       x_val=xv, y_val=yv, patience=3)
    assert len(hist) < 60  # on noise it stops long before the cap
    # the released weights are the best epoch's: retraining for exactly that many epochs gives the same model
    again, h2 = train_attack_model(_mlp(8), x, y, epochs=60, lr=0.05, optimizer='adam', seed=0, device='cpu',
                                   x_val=xv, y_val=yv, patience=3)
    for a, b in zip(stopped.state_dict().values(), again.state_dict().values()): torch.testing.assert_close(a, b, rtol=0, atol=0)
    full, _ = train_attack_model(_mlp(8), x, y, epochs=60, lr=0.05, optimizer='adam', seed=0, device='cpu')
    assert _heldout_loss(stopped, xv, yv) <= _heldout_loss(full, xv, yv)  # overfitting noise raises the held-out loss


def test_without_held_out_rows_it_is_refused():
    with pytest.raises(ValueError, match='x_val and y_val'): train_attack_model(AttackMLP(8), *_noise(50, 8, 0), epochs=2, x_val=np.zeros((2, 8)))
    with pytest.raises(ValueError, match="use 'split' or 'refit'"):
        P.validate_params({'attack_stop': 'heldout', 'attack_check': 'none'})
    with pytest.raises(ValueError, match='attack_stop must be one of'): P.validate_params({'attack_stop': 'converged'})
    from mia_pruning.attacks import synthetic_attack_data
    sd = synthetic_attack_data(100, seed=1)
    with pytest.raises(ValueError, match="attack_check 'split' or 'refit', not 'none'"):
        run_attacks('nn', sd, sd, attack_check='none', attack_stop='heldout')


def test_the_default_keeps_cell_ids_and_the_option_is_its_own_cell():
    assert P.cell_id({'attack_stop': 'epochs'}) == P.cell_id({})
    assert P.cell_id({'attack_stop': 'heldout'}) != P.cell_id({})
