"""The mlbench tabular sets (letter, dna, satellite): where they are read from, how they are encoded, and a tiny cell on letter.

Tests that read .rda files need the optional `rdata` package (`pip install "mia_pruning[tabular]"`); those on the real
data also need the system package (`apt-get install r-cran-mlbench`). Each is skipped with that message when absent.
"""
import shutil
import time

import numpy as np
import pandas as pd
import pytest

from mia_pruning.data import (DATASETS, MLBENCH, MLBENCH_SYSTEM_DIR, TABULAR_EXTRA, encode_labels, load_dataset,
                              read_rda_frame, scale_integer_features)

try: import rdata  # noqa: F401
except ImportError: HAS_RDATA = False
else: HAS_RDATA = True
HAS_SYSTEM = all((MLBENCH_SYSTEM_DIR / s.file).is_file() for s in MLBENCH.values())
needs_rdata = pytest.mark.skipif(not HAS_RDATA, reason=f'the optional rdata package is not installed ({TABULAR_EXTRA})')
needs_system = pytest.mark.skipif(not (HAS_RDATA and HAS_SYSTEM),
                                  reason=f'needs rdata ({TABULAR_EXTRA}) and the mlbench data (apt-get install r-cran-mlbench: '
                                         f'{MLBENCH_SYSTEM_DIR})')
NAMES = list(MLBENCH)
# what the published files (mlbench 2.1-3) hold: rows, the smallest and largest class, the first row's label, and the
# content hash of the encoded pool, which run folders record: a change to the encoding must change it deliberately
REAL = {'letter': (20000, 734, 813, 'T', '827ac6c1539d791a'), 'dna': (3186, 765, 1654, 'n', 'e6c578a0b0485061'),
        'satellite': (6435, 626, 1533, 'grey soil', '02c63047b1c526f0')}


def _frame(name, n=30, seed=0, levels=None):
    "A small table in `name`'s published layout: its label column (a factor) and its feature columns."
    spec, info = MLBENCH[name], DATASETS[name]
    rng = np.random.RandomState(seed)
    labels = [info.classes[k % info.num_classes] for k in rng.permutation(n)]
    d = info.input_shape[0]
    if spec.high == 1:  # DNA: factors with levels '0' and '1'
        feats = {f'V{j + 1}': pd.Categorical(rng.randint(0, 2, n).astype(str), categories=['0', '1']) for j in range(d)}
    else: feats = {f'f{j}': rng.randint(0, spec.high + 1, n).astype(float) for j in range(d)}
    lab = pd.Categorical(labels, categories=list(levels if levels is not None else info.classes))
    return pd.DataFrame({spec.label: lab, **feats})


def _write(folder, name, frame):
    import rdata
    folder.mkdir(parents=True, exist_ok=True)
    rdata.write_rda(folder / MLBENCH[name].file, {MLBENCH[name].obj: frame})
    return folder / MLBENCH[name].file


# ---------------------------------------------------------------- needs nothing: registry, error paths, encoders
def test_registry_records_the_documented_label_order():
    for name, (n_classes, d) in {'letter': (26, 16), 'dna': (3, 180), 'satellite': (6, 36)}.items():
        info = DATASETS[name]
        assert (info.kind, info.num_classes, info.input_shape, len(info.classes)) == ('tabular', n_classes, (d,), n_classes)
        assert list(info.classes) == sorted(info.classes)  # class names sorted as strings
        assert info.system_dirs == (MLBENCH_SYSTEM_DIR,) and info.mean is None
    assert DATASETS['letter'].classes[:3] == ('A', 'B', 'C') and DATASETS['dna'].classes == ('ei', 'ie', 'n')


@pytest.mark.parametrize('name', NAMES)
def test_a_root_without_the_file_names_every_path_and_the_package(name, tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_dataset(name, root=tmp_path)
    msg, f = str(e.value), MLBENCH[name].file
    for p in (tmp_path / name / f, tmp_path / 'mlbench' / f, tmp_path / f): assert str(p) in msg
    assert 'apt-get install r-cran-mlbench' in msg and TABULAR_EXTRA in msg
    looked = msg.split('Looked in:')[1].split('Get it with')[0]
    assert str(MLBENCH_SYSTEM_DIR) not in looked  # a named root is the only place searched, even where the package is installed


def test_a_file_given_as_root_is_an_error(tmp_path):
    (tmp_path / 'afile').write_text('x')
    with pytest.raises(FileNotFoundError, match='is a file, not a folder'):
        load_dataset('letter', root=tmp_path / 'afile')


def test_without_rdata_the_error_names_the_file_and_the_extra(tmp_path, monkeypatch):
    f = tmp_path / 'letter' / 'LetterRecognition.rda'
    f.parent.mkdir(); f.write_bytes(b'anything')
    monkeypatch.setitem(__import__('sys').modules, 'rdata', None)  # `import rdata` now fails as if it were not installed
    with pytest.raises(ImportError) as e:
        load_dataset('letter', root=tmp_path)
    assert str(f) in str(e.value) and 'pip install "mia_pruning[tabular]"' in str(e.value)


def test_integer_features_are_scaled_by_the_published_range():
    fr = pd.DataFrame({'a': [0., 15., 6.], 'b': [3., 0., 15.]})
    np.testing.assert_array_equal(scale_integer_features(fr, 15), np.array([[0, 3], [15, 0], [6, 15]], np.float32) / np.float32(15))
    assert scale_integer_features(fr, 15).dtype == np.float32
    # a subset is encoded row for row as in the whole table: the range is the publisher's, not the data's
    np.testing.assert_array_equal(scale_integer_features(fr.iloc[[2]], 15), scale_integer_features(fr, 15)[[2]])


def test_binary_factors_are_read_by_their_level_names_not_their_codes():
    fr = pd.DataFrame({'V1': pd.Categorical(['1', '0', '1'], categories=['1', '0']),  # code 0 is the level '1'
                       'V2': [0, 1, 1]})
    np.testing.assert_array_equal(scale_integer_features(fr, 1), np.array([[1, 0], [0, 1], [1, 1]], np.float32))


@pytest.mark.parametrize('frame,high,needle', [
    (pd.DataFrame({'onpix': [2., 16.]}), 15, "'onpix' holds 16.0 in row 1"),
    (pd.DataFrame({'onpix': [-1.]}), 15, 'not an integer in [0, 15]'),
    (pd.DataFrame({'x': [0.5]}), 1, 'not an integer in [0, 1]'),
    (pd.DataFrame({'x': [1., np.nan]}), 1, 'nan in row 1'),
    (pd.DataFrame({'V1': pd.Categorical(['a', 'c'])}), 1, "'V1' has non-numeric levels"),
    (pd.DataFrame({'V1': ['a', 'c']}), 1, "'V1' is not numeric"),
])
def test_values_outside_the_published_range_are_named_errors(frame, high, needle):
    with pytest.raises(ValueError) as e:
        scale_integer_features(frame, high, 'F.rda')
    assert 'F.rda' in str(e.value) and needle in str(e.value)


def test_labels_follow_the_registry_order_not_the_files_levels():
    cl = DATASETS['satellite'].classes
    lab = pd.Categorical(['red soil', 'cotton crop', 'very damp grey soil'], categories=['red soil', 'very damp grey soil', 'cotton crop'])
    np.testing.assert_array_equal(encode_labels(lab, cl), [3, 0, 5])
    np.testing.assert_array_equal(encode_labels(['red soil', 'cotton crop', 'very damp grey soil'], cl), [3, 0, 5])  # plain strings too
    with pytest.raises(ValueError, match=r"S.rda: label\(s\) \['mud'\] are not among the 6 classes"):
        encode_labels(['mud', 'red soil'], cl, 'S.rda')
    with pytest.raises(ValueError, match='S.rda: 1 row'):
        encode_labels(pd.Categorical(['red soil', None]), cl, 'S.rda')


# ---------------------------------------------------------------- needs rdata: tiny .rda files in a temporary root
@needs_rdata
@pytest.mark.parametrize('name', NAMES)
def test_a_root_holding_a_copy_is_read_and_recorded(name, tmp_path):
    fr = _frame(name, levels=list(reversed(DATASETS[name].classes)))  # the file's own level order is reversed
    f = _write(tmp_path / name, name, fr)
    ds = load_dataset(name, root=tmp_path)
    info = DATASETS[name]
    assert (len(ds), ds.input_shape, ds.num_classes, ds.kind) == (30, info.input_shape, info.num_classes, 'tabular')
    assert ds.source == {'path': str(f.resolve()), 'files': [f.name]}
    assert ds.y.tolist() == [info.classes.index(str(v)) for v in fr[MLBENCH[name].label]]  # documented order
    x = np.stack([np.asarray(fr[c]).astype(float) for c in fr.columns if c != MLBENCH[name].label], axis=1)
    np.testing.assert_allclose(ds.x.numpy(), x / MLBENCH[name].high, rtol=1e-6)


@needs_rdata
def test_each_place_under_a_root_and_the_default_root(tmp_path, monkeypatch):
    for sub in ('mlbench', ''):
        root = tmp_path / f'r{sub}'
        f = _write(root / sub if sub else root, 'letter', _frame('letter'))
        assert load_dataset('letter', root=root).source['path'] == str(f.resolve())
    # no root: the default data root ($MIA_PRUNING_DATA) is searched before the system package, and the source says so
    f = _write(tmp_path / 'default' / 'letter', 'letter', _frame('letter', n=12))
    monkeypatch.setenv('MIA_PRUNING_DATA', str(tmp_path / 'default'))
    ds = load_dataset('letter')
    assert len(ds) == 12 and ds.source['path'] == str(f.resolve())


@needs_rdata
def test_the_hash_follows_the_content_not_the_place(tmp_path):
    a = load_dataset('dna', root=_write(tmp_path / 'a', 'dna', _frame('dna', seed=1)).parent)
    b = load_dataset('dna', root=_write(tmp_path / 'b' / 'dna', 'dna', _frame('dna', seed=1)).parent.parent)
    assert a is not b and a.content_hash == b.content_hash and len(a.content_hash) == 16
    fr = _frame('dna', seed=1)
    fr['V7'] = pd.Categorical(np.where(fr['V7'] == '1', '0', '1'), categories=['0', '1'])  # one feature flipped
    c = load_dataset('dna', root=_write(tmp_path / 'c', 'dna', fr).parent)
    assert c.content_hash != a.content_hash


@needs_rdata
def test_malformed_files_are_named(tmp_path):
    d = tmp_path / 'letter'; d.mkdir()
    f = d / 'LetterRecognition.rda'
    f.write_bytes(b'RDX3\nnot really')
    with pytest.raises(ValueError, match='is not a readable R data file'): load_dataset('letter', root=tmp_path)
    import rdata
    rdata.write_rda(f, {'Letters': _frame('letter')})
    with pytest.raises(ValueError, match=r"expected an R object named 'LetterRecognition', found \['Letters'\]"):
        load_dataset('letter', root=tmp_path)
    _write(d, 'letter', _frame('letter').drop(columns='lettr'))
    with pytest.raises(ValueError, match="needs a label column 'lettr'"): load_dataset('letter', root=tmp_path)
    _write(d, 'letter', _frame('letter').drop(columns='f3'))
    with pytest.raises(ValueError, match='has 16 feature columns besides'): load_dataset('letter', root=tmp_path)
    fr = _frame('letter'); fr.loc[4, 'f0'] = 16.0
    _write(d, 'letter', fr)
    with pytest.raises(ValueError) as e: load_dataset('letter', root=tmp_path)
    assert str(f) in str(e.value) and "'f0' holds 16.0 in row 4" in str(e.value)
    with pytest.raises(FileNotFoundError): read_rda_frame(tmp_path / 'absent.rda', 'X')


# ---------------------------------------------------------------- needs rdata and the system package: the real data
@needs_system
@pytest.mark.parametrize('name', NAMES)
def test_the_published_sets(name, tmp_path, monkeypatch):
    monkeypatch.setenv('MIA_PRUNING_DATA', str(tmp_path / 'nothing_here'))
    ds = load_dataset(name)  # no root: the system package's copy, and the source says so
    rows, lo, hi, first, digest = REAL[name]
    counts = np.bincount(ds.y.numpy(), minlength=ds.num_classes)
    assert (len(ds), ds.input_shape, int(counts.min()), int(counts.max())) == (rows, DATASETS[name].input_shape, lo, hi)
    assert counts.sum() == rows and (counts > 0).all() and int(ds.y.min()) == 0 and int(ds.y.max()) == ds.num_classes - 1
    assert DATASETS[name].classes[int(ds.y[0])] == first  # the documented order, checked on the first published row
    assert float(ds.x.min()) >= 0 and float(ds.x.max()) <= 1 and ds.content_hash == digest
    assert ds.source == {'path': str((MLBENCH_SYSTEM_DIR / MLBENCH[name].file).resolve()), 'files': [MLBENCH[name].file]}
    if name == 'dna': assert set(np.unique(ds.x.numpy())) == {0.0, 1.0}
    if name == 'letter': assert np.allclose(ds.x.numpy() * 15, np.round(ds.x.numpy() * 15), atol=1e-5)
    # a copy under a named root is read instead, recorded as such, and hashes the same
    copy = tmp_path / 'root' / name
    copy.mkdir(parents=True); shutil.copy(MLBENCH_SYSTEM_DIR / MLBENCH[name].file, copy)
    c = load_dataset(name, root=tmp_path / 'root')
    assert c.source['path'] == str((copy / MLBENCH[name].file).resolve()) and c.content_hash == ds.content_hash
    from mia_pruning import data
    data._LOADED.clear()  # read again from the file: the same hash
    assert load_dataset(name).content_hash == ds.content_hash


@needs_system
def test_a_tiny_letter_cell_runs_end_to_end(tmp_path):
    from mia_pruning.pipeline import run_cell
    t0 = time.time()
    r = run_cell(progress=False, out_dir=tmp_path / 'run', dataset='letter', arch='column_fc', subsample=600, num_shadows=1,
                 num_references=0, n_boot=0, epochs=1, attacks='conf,loss', sensitivity_m=2)
    took = time.time() - t0
    assert r.params['dataset'] == 'letter' and r.provenance['data']['name'] == 'letter'
    assert r.provenance['data']['source']['path'] == str((MLBENCH_SYSTEM_DIR / 'LetterRecognition.rda').resolve())
    assert r.provenance['data']['source']['subsample'] == 600
    for state in ('dense', 'pruned'):
        for attack in ('conf', 'loss'): assert 0 <= r.metrics[f'{state}/{attack}/auc'] <= 1
    assert r.provenance['data']['n'] == 600 and r.metrics['dense/test_acc'] >= 0
    assert (tmp_path / 'run' / 'params.json').is_file()
    print(f'tiny letter cell: {took:.1f} s')
