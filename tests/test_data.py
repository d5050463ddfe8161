"Every dataset loader reads small files that the test writes in the publisher's real on-disk format."
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

from mia_pruning.data import DATASETS, load_dataset, make_splits, write_idx, get_splits, _FASHION_FILES
from mia_pruning.core import ArtifactCache

RNG = np.random.RandomState(0)


def test_registry_has_every_name_of_the_contract():
    assert set(DATASETS) == {'digits', 'fashion_mnist', 'cifar10', 'cifar100', 'svhn', 'chmnist', 'purchase100',
                             'texas100', 'location', 'letter', 'dna', 'satellite'}


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match='known: digits, fashion_mnist'):
        load_dataset('imagenet')


@pytest.mark.parametrize('name', [n for n in DATASETS if n != 'digits'])
def test_missing_files_say_where_and_how(name, tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_dataset(name, root=tmp_path / 'empty')
    msg = str(e.value)
    assert 'Looked in' in msg and str(tmp_path / 'empty') in msg
    assert DATASETS[name].howto.split()[0] in msg


def test_digits_is_embedded():
    ds = load_dataset('digits')
    assert (len(ds), ds.input_shape, ds.num_classes, ds.kind) == (1797, (1, 8, 8), 10, 'image')
    assert abs(float(ds.x.mean())) < 0.01 and abs(float(ds.x.std()) - 1) < 0.01


def test_fashion_mnist_idx(tmp_path):
    root = tmp_path / 'FashionMNIST' / 'raw'
    root.mkdir(parents=True)
    imgs = {'train': RNG.randint(0, 256, (7, 28, 28)), 't10k': RNG.randint(0, 256, (3, 28, 28))}
    labels = {'train': RNG.randint(0, 10, 7), 't10k': RNG.randint(0, 10, 3)}
    for n in _FASHION_FILES:
        part = n.split('-')[0]
        write_idx(root / n, imgs[part] if 'images' in n else labels[part])  # uncompressed variant
    ds = load_dataset('fashion_mnist', root=tmp_path)
    assert ds.input_shape == (1, 28, 28) and len(ds) == 10
    np.testing.assert_array_equal(ds.y.numpy(), np.concatenate([labels['train'], labels['t10k']]))
    raw0 = ds.x[0, 0] * 0.3530 + 0.2860
    np.testing.assert_allclose(raw0.numpy(), imgs['train'][0] / 255.0, atol=1e-5)


def _cifar_batch(path, n, key, num_classes):
    data = RNG.randint(0, 256, (n, 3072)).astype(np.uint8)
    labels = RNG.randint(0, num_classes, n).tolist()
    with open(path, 'wb') as f:
        pickle.dump({b'batch_label': b'x', b'data': data, key: labels, b'filenames': [b'a'] * n}, f, protocol=2)
    return data, labels


def test_cifar10_batches(tmp_path):
    d = tmp_path / 'cifar-10-batches-py'
    d.mkdir()
    first = None
    for n in [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']:
        out = _cifar_batch(d / n, 2, b'labels', 10)
        first = first or out
    ds = load_dataset('cifar10', root=tmp_path)
    assert (len(ds), ds.input_shape, ds.num_classes) == (12, (3, 32, 32), 10)
    mean = torch.tensor((0.4914, 0.4822, 0.4465)).view(3, 1, 1)
    std = torch.tensor((0.2023, 0.1994, 0.2010)).view(3, 1, 1)
    np.testing.assert_allclose((ds.x[0] * std + mean).numpy(), first[0][0].reshape(3, 32, 32) / 255.0, atol=1e-5)


def test_cifar100_uses_its_own_statistics(tmp_path):
    d = tmp_path / 'cifar-100-python'
    d.mkdir()
    _cifar_batch(d / 'train', 4, b'fine_labels', 100)
    _cifar_batch(d / 'test', 2, b'fine_labels', 100)
    ds = load_dataset('cifar100', root=tmp_path)
    assert (len(ds), ds.num_classes) == (6, 100)
    assert DATASETS['cifar100'].mean != DATASETS['cifar10'].mean


def test_cifar_refuses_code_in_pickles(tmp_path):
    d = tmp_path / 'cifar-10-batches-py'
    d.mkdir()

    class Evil:
        def __reduce__(self):
            return (eval, ("open('pwned', 'w')",))
    for n in [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']:
        with open(d / n, 'wb') as f:
            pickle.dump({b'data': Evil(), b'labels': [0]}, f)
    with pytest.raises(pickle.UnpicklingError, match='refusing'):
        load_dataset('cifar10', root=tmp_path)
    assert not (tmp_path / 'pwned').exists()


def test_svhn_mat(tmp_path):
    d = tmp_path / 'svhn'
    d.mkdir()
    for name, n in [('train_32x32.mat', 5), ('test_32x32.mat', 3)]:
        y = np.array([10, 1, 2, 3, 4, 5, 6, 7][:n]).reshape(-1, 1)
        savemat(d / name, {'X': RNG.randint(0, 256, (32, 32, 3, n)).astype(np.uint8), 'y': y})
    ds = load_dataset('svhn', root=tmp_path)
    assert (len(ds), ds.input_shape) == (8, (3, 32, 32))
    assert ds.y[0].item() == 0  # label 10 means digit 0


def test_chmnist_image_folder(tmp_path):
    d = tmp_path / 'Kather_texture_2016_image_tiles_5000'
    classes = ['01_TUMOR', '02_STROMA', '03_COMPLEX', '04_LYMPHO', '05_DEBRIS', '06_MUCOSA', '07_ADIPOSE', '08_EMPTY']
    for c in classes:
        (d / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(RNG.randint(0, 256, (150, 150, 3)).astype(np.uint8)).save(d / c / f'{i}.tif')
    ds = load_dataset('chmnist', root=tmp_path)
    assert (len(ds), ds.input_shape, ds.num_classes) == (16, (3, 32, 32), 8)
    assert sorted(set(ds.y.tolist())) == list(range(8))


def _tab(n, d, c):
    return RNG.randint(0, 2, (n, d)).astype(np.float32), RNG.randint(1, c + 1, n)


@pytest.mark.parametrize('name,d,c,fname', [('purchase100', 600, 100, 'purchase100.npz'),
                                            ('texas100', 6169, 100, 'texas100.npz'),
                                            ('location', 446, 30, 'location.npz')])
def test_tabular_npz_one_based(name, d, c, fname, tmp_path):
    x, y = _tab(12, d, c)
    y[0] = c  # make sure the top label occurs so 1-based labels are recognised
    np.savez(tmp_path / fname, x=x, y=y)
    ds = load_dataset(name, root=tmp_path)
    assert (len(ds), ds.input_shape, ds.num_classes, ds.kind) == (12, (d,), c, 'tabular')
    np.testing.assert_array_equal(ds.y.numpy(), y - 1)
    np.testing.assert_array_equal(ds.x.numpy(), x)


def test_purchase_csv_label_first_and_last(tmp_path):
    x, y = _tab(6, 600, 100)
    y[0] = 100
    np.savetxt(tmp_path / 'dataset_purchase', np.column_stack([y, x]), delimiter=',', fmt='%d')
    a = load_dataset('purchase100', root=tmp_path)
    other = tmp_path / 'other'
    other.mkdir()
    np.savetxt(other / 'purchase100.csv', np.column_stack([x, y]), delimiter=',', fmt='%d')
    b = load_dataset('purchase100', root=other)
    np.testing.assert_array_equal(a.y.numpy(), y - 1)
    np.testing.assert_array_equal(a.x.numpy(), b.x.numpy())
    np.testing.assert_array_equal(a.y.numpy(), b.y.numpy())


def test_texas_shokri_pair(tmp_path):
    x, y = _tab(5, 6169, 100)
    y[0] = 100
    (tmp_path / 'texas' / '100').mkdir(parents=True)
    np.savetxt(tmp_path / 'texas' / '100' / 'feats', x, delimiter=',', fmt='%d')
    np.savetxt(tmp_path / 'texas' / '100' / 'labels', y, fmt='%d')
    ds = load_dataset('texas100', root=tmp_path)
    assert len(ds) == 5
    np.testing.assert_array_equal(ds.y.numpy(), y - 1)


def test_location_bangkok_csv(tmp_path):
    x, y = _tab(4, 446, 30)
    y[0] = 30
    np.savetxt(tmp_path / 'bangkok', np.column_stack([y, x]), delimiter=',', fmt='%d')
    ds = load_dataset('location', root=tmp_path)
    assert (len(ds), ds.num_classes) == (4, 30)


def test_wrong_feature_count_is_a_clear_error(tmp_path):
    x, y = _tab(4, 100, 100)
    np.savez(tmp_path / 'purchase100.npz', x=x, y=y)
    with pytest.raises(ValueError, match='600 features'):
        load_dataset('purchase100', root=tmp_path)


def test_make_splits_protocol():
    s = make_splits(60000)
    assert s.victim.sizes() == (13500, 3000, 13500)
    assert len(s.shadows) == 5 and all(x.sizes() == (13500, 3000, 13500) for x in s.shadows)
    victim = np.concatenate([s.victim.train, s.victim.dev, s.victim.test])
    shadow_pool = np.unique(np.concatenate([np.concatenate([x.train, x.dev, x.test]) for x in s.shadows]))
    assert len(np.intersect1d(victim, shadow_pool)) == 0 and len(shadow_pool) == 30000
    assert not np.array_equal(s.shadows[0].train, s.shadows[1].train)  # re-splits of one pool with seed + i
    assert make_splits(60000, seed=8).victim.train.tolist() != s.victim.train.tolist()


@pytest.mark.parametrize('kw,match', [({'test_frac': 0}, 'test_frac'), ({'dev_frac': 1.0}, 'dev_frac'),
                                      ({'num_shadows': 0}, 'num_shadows'), ({'n': 3}, 'n must be')])
def test_make_splits_rejects_bad_input(kw, match):
    args = {'n': 1000} | kw
    with pytest.raises(ValueError, match=match):
        make_splits(**args)


def test_splits_saved_once_and_reused(tmp_path):
    cache = ArtifactCache(tmp_path)
    a = get_splits('digits', 1797, cache=cache)
    entry = next((tmp_path / 'splits').iterdir())
    mtime = (entry / 'data.npz').stat().st_mtime_ns
    b = get_splits('digits', 1797, cache=cache)
    assert (entry / 'data.npz').stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(a.shadows[2].test, b.shadows[2].test)
