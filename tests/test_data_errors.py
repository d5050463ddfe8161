"Damaged or malformed data files: each is a ValueError that names the file and says what was expected."
import gzip
import pickle

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from mia_pruning.data import load_dataset, read_cifar_batch, write_idx, _FASHION_FILES

RNG = np.random.RandomState(0)
C10 = [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']


def _raises_naming(path, call, *fragments):
    with pytest.raises(ValueError) as e:
        call()
    msg = str(e.value)
    assert str(path) in msg, f'{path} not named in: {msg}'
    for f in fragments: assert f in msg, f'{f!r} not in: {msg}'
    return msg


# ---------------------------------------------------------------- CIFAR batches
def _cifar(tmp_path, bad=None, content=None):
    d = tmp_path / 'cifar-10-batches-py'; d.mkdir()
    for n in C10:
        obj = {b'data': RNG.randint(0, 256, (2, 3072)).astype(np.uint8), b'labels': [1, 2]}
        with open(d / n, 'wb') as f: pickle.dump(obj, f, protocol=2)
    if bad is not None:
        p = d / bad
        if callable(content): p.write_bytes(content(p.read_bytes()))
        else:
            with open(p, 'wb') as f: pickle.dump(content, f, protocol=2)
    return d


@pytest.mark.parametrize('case,content,expected', [
    ('empty', lambda b: b'', 'not a readable CIFAR batch'),
    ('truncated', lambda b: b[:len(b) // 2], 'not a readable CIFAR batch'),
    ('garbage', lambda b: b'this is not a pickle at all', 'not a readable CIFAR batch'),
    ('a_list', [1, 2, 3], 'expected a dict with a "data" entry'),
    ('no_labels', {b'data': np.zeros((2, 3072), np.uint8)}, "needs a 'labels' entry"),
    ('data_wrong_width', {b'data': np.zeros((2, 100), np.uint8), b'labels': [0, 1]}, '(n, 3072)'),
    ('data_one_dimensional', {b'data': np.zeros(3072, np.uint8), b'labels': [0]}, '(n, 3072)'),
    ('data_floats', {b'data': np.full((2, 3072), 0.5), b'labels': [0, 1]}, 'array of bytes'),
    ('labels_count', {b'data': np.zeros((2, 3072), np.uint8), b'labels': [0, 1, 2]}, '2 images but 3 labels'),
    ('labels_two_dimensional', {b'data': np.zeros((2, 3072), np.uint8), b'labels': np.zeros((2, 2), np.int64)}, '1-D array of labels'),
    ('labels_out_of_range', {b'data': np.zeros((2, 3072), np.uint8), b'labels': [0, 10]}, 'labels must lie in [0, 10)'),
])
def test_bad_cifar_batch_names_the_file(case, content, expected, tmp_path):
    d = _cifar(tmp_path, 'data_batch_3', content)
    _raises_naming(d / 'data_batch_3', lambda: load_dataset('cifar10', root=tmp_path), expected)


def test_code_in_a_cifar_batch_is_refused_naming_the_file(tmp_path):
    class Evil:
        def __reduce__(self): return (eval, ("1",))
    p = tmp_path / 'b'
    with open(p, 'wb') as f: pickle.dump({b'data': Evil()}, f)
    with pytest.raises(pickle.UnpicklingError, match='refusing to load') as e:
        read_cifar_batch(p)
    assert str(p) in str(e.value)


# ---------------------------------------------------------------- IDX files (Fashion-MNIST)
def _fashion(tmp_path, override=None):
    d = tmp_path / 'fashion_mnist'; d.mkdir()
    arrays = {n: (RNG.randint(0, 256, (4, 28, 28)) if 'images' in n else RNG.randint(0, 10, 4)) for n in _FASHION_FILES}
    arrays.update(override or {})
    for n, a in arrays.items(): write_idx(d / (n + '.gz'), a)
    return d


@pytest.mark.parametrize('name,arr,expected', [
    ('train-images-idx3-ubyte', np.zeros((4, 784)), 'expected images of shape (n, 28, 28)'),
    ('t10k-images-idx3-ubyte', np.zeros((4, 27, 28)), 'expected images of shape (n, 28, 28)'),
    ('train-labels-idx1-ubyte', np.zeros((4, 1)), 'expected a 1-D array of labels'),
    ('t10k-labels-idx1-ubyte', np.zeros(3), 'holds 3 labels but'),
    ('train-labels-idx1-ubyte', np.array([0, 1, 2, 10]), 'labels must lie in [0, 10)'),
])
def test_bad_idx_file_names_the_file(name, arr, expected, tmp_path):
    d = _fashion(tmp_path, {name: arr})
    _raises_naming(d / (name + '.gz'), lambda: load_dataset('fashion_mnist', root=tmp_path), expected)


def test_idx_truncated_gzip_names_the_file(tmp_path):
    d = _fashion(tmp_path)
    p = d / (_FASHION_FILES[2] + '.gz'); p.write_bytes(p.read_bytes()[:30])
    _raises_naming(p, lambda: load_dataset('fashion_mnist', root=tmp_path))


def test_idx_float_images_with_nan_are_rejected(tmp_path):
    d = _fashion(tmp_path)
    a = np.full((4, 28, 28), 7.0, dtype='>f4'); a[1, 2, 3] = np.nan
    raw = bytes([0, 0, 0x0D, 3]) + np.array(a.shape, dtype='>i4').tobytes() + a.tobytes()
    (d / (_FASHION_FILES[0] + '.gz')).write_bytes(gzip.compress(raw))
    _raises_naming(d / (_FASHION_FILES[0] + '.gz'), lambda: load_dataset('fashion_mnist', root=tmp_path), '1 non-finite')


# ---------------------------------------------------------------- tabular files
def _npz(tmp_path, x, y, name='purchase100.npz'):
    p = tmp_path / name
    np.savez(p, x=x, y=y)
    return p


@pytest.mark.parametrize('bad', ['nan', 'inf', '-inf'])
def test_nonfinite_tabular_features_are_rejected(bad, tmp_path):
    x = RNG.randint(0, 2, (5, 600)).astype(np.float32); x[2, 7] = float(bad)
    p = _npz(tmp_path, x, np.arange(1, 6))
    _raises_naming(p, lambda: load_dataset('purchase100', root=tmp_path), '1 non-finite')


def test_nonfinite_csv_features_are_rejected(tmp_path):
    rows = [','.join(['1'] * 10 + ['nan'] + ['0'] * 589 + ['3']) for _ in range(3)]
    p = tmp_path / 'purchase100.csv'; p.write_text('\n'.join(rows) + '\n')
    _raises_naming(p, lambda: load_dataset('purchase100', root=tmp_path), 'non-finite')


@pytest.mark.parametrize('y,expected', [(np.ones((5, 2)), '1-D array of labels'), (np.ones((5, 1)), '1-D array of labels'),
                                        (np.array([1, 2, np.nan, 4, 5]), 'labels must be finite'),
                                        (np.array([1.5, 2, 3, 4, 5]), 'labels must be integers'),
                                        (np.array([1, 2, 3]), '5 rows in x but 3 labels')])
def test_bad_tabular_labels_name_the_file(y, expected, tmp_path):
    p = _npz(tmp_path, np.zeros((5, 446), np.float32), y, 'location.npz')
    _raises_naming(p, lambda: load_dataset('location', root=tmp_path), expected)


def test_texas_labels_with_two_columns_name_the_file(tmp_path):
    d = tmp_path / 'texas' / '100'; d.mkdir(parents=True)
    np.savetxt(d / 'feats', np.zeros((2, 6169)), delimiter=',', fmt='%d')
    np.savetxt(d / 'labels', np.ones((2, 2)), delimiter=',', fmt='%d')
    _raises_naming(d / 'labels', lambda: load_dataset('texas100', root=tmp_path), '1-D array of labels')


# ---------------------------------------------------------------- SVHN and CH-MNIST
def test_truncated_svhn_mat_names_the_file(tmp_path):
    d = tmp_path / 'svhn'; d.mkdir()
    for f in ('train_32x32.mat', 'test_32x32.mat'):
        savemat(d / f, {'X': RNG.randint(0, 256, (32, 32, 3, 2)).astype(np.uint8), 'y': np.array([[1], [10]])})
    p = d / 'test_32x32.mat'; p.write_bytes(p.read_bytes()[:100])
    _raises_naming(p, lambda: load_dataset('svhn', root=tmp_path))


def test_svhn_with_wrong_shapes_names_the_file(tmp_path):
    d = tmp_path / 'svhn'; d.mkdir()
    savemat(d / 'train_32x32.mat', {'X': np.zeros((32, 32, 3, 2), np.uint8), 'y': np.array([[1], [2]])})
    savemat(d / 'test_32x32.mat', {'X': np.zeros((28, 28, 3, 2), np.uint8), 'y': np.array([[1], [2]])})
    _raises_naming(d / 'test_32x32.mat', lambda: load_dataset('svhn', root=tmp_path), '(32, 32, 3, n)')


def test_corrupt_chmnist_tile_names_the_file(tmp_path):
    root = tmp_path / 'Kather_texture_2016_image_tiles_5000'
    for c in range(8):
        (root / f'{c:02d}_CLASS').mkdir(parents=True)
        Image.fromarray(RNG.randint(0, 256, (40, 40, 3)).astype(np.uint8)).save(root / f'{c:02d}_CLASS' / 'a.tif')
    bad = root / '03_CLASS' / 'b.tif'; bad.write_bytes(b'II*\x00 not really a tiff')
    _raises_naming(bad, lambda: load_dataset('chmnist', root=tmp_path), 'not a readable image')
