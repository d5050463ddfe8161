"""The run folder's files have one reader and writer (mia_pruning.runs): what it writes is what the pipeline wrote, and it reads it back."""
import zipfile
import numpy as np
import pandas as pd
import pytest
from mia_pruning import runs as R


def _cell_arrays(rng, n=40, attacks=('loss', 'rmia')):
    "One state's arrays in the order the attack stage builds them (its own, then per attack its score and decision)."
    m = rng.random(n) < 0.5
    arr = {'is_member': m, 'labels': rng.integers(0, 3, n), 'index': rng.permutation(100)[:n], 'py': rng.random(n), 'sy': rng.random(n)}
    for a in attacks: arr[f'score__{a}'] = rng.normal(size=n) + m; arr[f'pred__{a}'] = arr[f'score__{a}'] > 0.5
    return arr


def test_write_run_folder_writes_what_pipeline_write_run_wrote(tmp_path, monkeypatch):
    "Every file and every array of the scores file (names, order, bytes) as pipeline.write_run wrote them before it called runs."
    from mia_pruning.core import save_json, save_arrays
    rng = np.random.default_rng(0)
    per_state = {'dense': _cell_arrays(rng), 'pruned': _cell_arrays(rng, attacks=('loss', 'rmia', 'two_release'))}
    flat = {f'{s}__{k}': v for s, arr in per_state.items() for k, v in arr.items()}  # as run_cell assembled `scores`
    rec = dict(params={'sparsity': 0.5}, provenance={'cell_id': 'c'}, rows=[{'attack': 'loss'}], divergence={'dense': {}}, metrics={'x': 1.0})
    old = tmp_path / 'old'; old.mkdir()  # the writer as it stood in pipeline.write_run
    save_json(old / 'params.json', {'params': rec['params'], 'provenance': rec['provenance']})
    save_arrays(old / 'scores.npz', **flat)
    save_json(old / 'rows.json', rec['rows']); save_json(old / 'divergence.json', rec['divergence']); save_json(old / 'metrics.json', rec['metrics'])
    new = R.write_run_folder(tmp_path / 'new', states={s: R.StateArrays.from_arrays(a) for s, a in per_state.items()}, **rec)
    assert sorted(p.name for p in new.iterdir()) == sorted(p.name for p in old.iterdir())
    for f in ('params.json', 'rows.json', 'divergence.json', 'metrics.json'): assert (new / f).read_bytes() == (old / f).read_bytes(), f
    with zipfile.ZipFile(old / 'scores.npz') as a, zipfile.ZipFile(new / 'scores.npz') as b:
        assert a.namelist() == b.namelist() and len(a.namelist()) == len(flat)
        for name in a.namelist(): assert a.read(name) == b.read(name), name
    assert list(R.join_states(R.read_scores(new))) == list(flat)  # read back: the same keys in the same order


def test_write_run_folder_refuses_flat_arrays_before_touching_the_folder(tmp_path):
    rd = tmp_path / 'r'; rd.mkdir(); (rd / 'metrics.json').write_text('{}')
    with pytest.raises(TypeError, match='expected a StateArrays'):
        R.write_run_folder(rd, params={}, provenance={}, rows=[], states={'dense': {'is_member': np.ones(2, bool)}}, divergence={}, metrics={})
    assert (rd / 'metrics.json').is_file()


def test_score_keys_and_pairing(tmp_path):
    assert R.score_key('dense', 'is_member') == 'dense__is_member' and R.score_key(None, 'pred', 'nn') == 'pred__nn'
    with pytest.raises(ValueError): R.score_key('dense', 'score')  # a score names its attack
    with pytest.raises(ValueError): R.score_key('de__nse', 'py')
    rng = np.random.default_rng(1)
    st = R.split_states({f'{s}__{k}': v for s in ('dense', 'pruned') for k, v in _cell_arrays(np.random.default_rng(1)).items()})
    R.check_paired(st, 'x')
    st['pruned'].common['labels'] = st['pruned'].common['labels'] + 1
    with pytest.raises(ValueError, match=r'labels arrays differ'): R.check_paired(st, 'x')
    st['pruned'].common['py'] = st['pruned'].common['py'][:-1]
    with pytest.raises(ValueError, match=r"pruned arrays \['py'\] do not have the shape"): R.check_paired(st, 'x')
    one = R.split_states({f'dense__{k}': v for k, v in _cell_arrays(rng).items()})
    one['dense'].common['is_member'] = np.ones(40, bool)
    with pytest.raises(ValueError, match='needs both members and non-members'): R.check_paired(one, 'x')
    R.check_paired(one, 'x', mixed=False)
    with pytest.raises(ValueError, match='not a key'): R.split_states({'nokey': np.ones(2)})
    (tmp_path / 'scores.npz').write_bytes(b'not a zip')
    with pytest.raises(ValueError, match='cannot be read'): R.read_scores(tmp_path)
    with pytest.raises(ValueError, match='not a readable archive'): R.stored_attacks(tmp_path)


def test_a_cell_stored_at_float32_reports_what_it_computed(tmp_path):
    "scores_dtype='float32': the same cell's rows, and every metric recomputed from its stored scores, equal the float64 run's; the file is smaller."
    from mia_pruning import pipeline as P
    from mia_pruning.core import load_json
    from mia_pruning.metrics import membership_metrics
    tiny = dict(dataset='digits', arch='mlp', num_shadows=1, epochs=3, attacks='loss,conf,mentr,rmia', n_boot=0, attack_epochs=1,
                threads=1, device='cpu', cache_dir=str(tmp_path / 'cache'))
    assert P.cell_id({**tiny, 'scores_dtype': 'float64'}) == P.cell_id(tiny) != P.cell_id({**tiny, 'scores_dtype': 'float32'})
    with pytest.raises(ValueError, match=r"scores_dtype must be one of \('float64', 'float32'\), got 'half'"):
        P.validate_params({**tiny, 'scores_dtype': 'half'})
    P.run_cell(progress=False, out_dir=tmp_path / 'f64', **tiny)
    P.run_cell(progress=False, out_dir=tmp_path / 'f32', **tiny, scores_dtype='float32')
    rows = {d: pd.DataFrame(load_json(tmp_path / d / 'rows.json')) for d in ('f64', 'f32')}
    assert set(rows['f32'].columns) ^ set(rows['f64'].columns) <= {'scores_dtype'}
    pd.testing.assert_frame_equal(rows['f32'].drop(columns=['cell_id', 'scores_dtype'], errors='ignore'),
                                  rows['f64'].drop(columns=['cell_id', 'scores_dtype'], errors='ignore'))
    with np.load(tmp_path / 'f32' / R.SCORES) as z: dtypes = {k: z[k].dtype for k in z.files}
    assert any(d == np.float32 for d in dtypes.values()) and all(d != np.float32 for k, d in dtypes.items() if '__score__' not in k)
    a, b = R.read_scores(tmp_path / 'f64'), R.read_scores(tmp_path / 'f32')
    for st in a:
        for att, s in a[st].scores.items():
            assert b[st].scores[att].dtype == np.float64
            got, want = membership_metrics(b[st].scores[att], b[st].is_member), membership_metrics(s, a[st].is_member)
            assert pd.Series(got).equals(pd.Series(want)), (st, att)  # NaN where a rate cannot be resolved, in both
    assert (tmp_path / 'f32' / R.SCORES).stat().st_size < (tmp_path / 'f64' / R.SCORES).stat().st_size
