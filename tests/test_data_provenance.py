"Where data comes from and what was used: explicit roots, provenance, fingerprints, subsets, and the study's splits."
import numpy as np
import pytest
import torch
from sklearn.model_selection import train_test_split

from mia_pruning.core import ArtifactCache
from mia_pruning.data import (FASHION_SYSTEM_DIR, SPLIT_PROTOCOL, MIADataset, dataset_fingerprint, get_splits, load_dataset,
                              make_splits, subsample_dataset, write_idx, _FASHION_FILES)

HAS_SYSTEM_FASHION = all((FASHION_SYSTEM_DIR / (n + '.gz')).is_file() or (FASHION_SYSTEM_DIR / n).is_file() for n in _FASHION_FILES)


def _fashion(folder, n_train=6, n_test=4, seed=0):
    rng = np.random.RandomState(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for f in _FASHION_FILES:
        k = n_train if f.startswith('train') else n_test
        write_idx(folder / (f + '.gz'), rng.randint(0, 256, (k, 28, 28)) if 'images' in f else rng.randint(0, 10, k))
    return folder


# ---------------------------------------------------------------- explicit roots are the only place searched
@pytest.mark.parametrize('kind', ['empty_folder', 'missing_folder', 'a_file'])
def test_explicit_fashion_root_without_files_is_an_error_even_with_a_system_copy(kind, tmp_path):
    root = tmp_path / 'root'
    if kind == 'empty_folder': root.mkdir()
    elif kind == 'a_file': root.write_text('not a folder')
    with pytest.raises(FileNotFoundError) as e:
        load_dataset('fashion_mnist', root=root)
    msg = str(e.value)
    assert str(root) in msg and str(FASHION_SYSTEM_DIR) not in msg.split('Get it with')[0]
    if kind == 'a_file': assert 'is a file, not a folder' in msg
    else: assert str(root / 'fashion_mnist') in msg and 'train-images-idx3-ubyte[.gz]' in msg


@pytest.mark.skipif(not HAS_SYSTEM_FASHION, reason='the dataset-fashion-mnist package is not installed')
def test_no_root_falls_back_to_the_system_copy_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv('MIA_PRUNING_DATA', str(tmp_path / 'nothing_here'))
    for root in (None, ''):
        ds = load_dataset('fashion_mnist', root)
        assert len(ds) == 70000 and ds.source['path'] == str(FASHION_SYSTEM_DIR.resolve())


def test_the_default_root_wins_over_the_system_copy(tmp_path, monkeypatch):
    _fashion(tmp_path / 'data' / 'fashion_mnist')
    monkeypatch.setenv('MIA_PRUNING_DATA', str(tmp_path / 'data'))
    ds = load_dataset('fashion_mnist')
    assert len(ds) == 10 and ds.source['path'] == str((tmp_path / 'data' / 'fashion_mnist').resolve())


# ---------------------------------------------------------------- provenance and content hash
def test_source_and_content_hash_follow_the_data_not_the_place(tmp_path):
    a = load_dataset('fashion_mnist', root=_fashion(tmp_path / 'a', seed=0))  # the files right under the root
    b = load_dataset('fashion_mnist', root=_fashion(tmp_path / 'b' / 'fashion_mnist', seed=0).parent)  # same files elsewhere
    c = load_dataset('fashion_mnist', root=_fashion(tmp_path / 'c' / 'fashion_mnist', seed=1).parent)  # other data
    assert a.source['path'] == str((tmp_path / 'a').resolve()) and a.source['files'] == [n + '.gz' for n in _FASHION_FILES]
    assert a.content_hash == b.content_hash != c.content_hash
    assert len(a.content_hash) == 16 and int(a.content_hash, 16) >= 0
    # the hash is of the arrays used: recomputing it from x and y gives the same value
    assert MIADataset(a.name, a.x.clone(), a.y.clone(), a.num_classes, a.kind).content_hash == a.content_hash


def test_a_changed_file_is_read_again(tmp_path):
    root = _fashion(tmp_path / 'fashion_mnist', seed=0).parent
    h0 = load_dataset('fashion_mnist', root).content_hash
    assert load_dataset('fashion_mnist', root) is load_dataset('fashion_mnist', root)  # cached while unchanged
    _fashion(tmp_path / 'fashion_mnist', n_train=7, seed=3)
    ds = load_dataset('fashion_mnist', root)
    assert len(ds) == 11 and ds.content_hash != h0


def test_fingerprint_equals_what_loading_records(tmp_path):
    root = _fashion(tmp_path / 'fashion_mnist').parent
    ds = load_dataset('fashion_mnist', root)
    assert dataset_fingerprint('fashion_mnist', root) == {'path': ds.source['path'], 'content_hash': ds.content_hash}
    d = load_dataset('digits')
    fp = dataset_fingerprint('digits', subsample=100, seed=3)
    assert fp == {'path': d.source['path'], 'content_hash': subsample_dataset(d, 100, 3).content_hash}
    with pytest.raises(FileNotFoundError, match='Looked in'):
        dataset_fingerprint('fashion_mnist', tmp_path / 'empty')


# ---------------------------------------------------------------- subsample
def test_subsample_keeps_class_proportions_and_is_seeded():
    ds = load_dataset('digits')
    full = np.bincount(ds.y.numpy(), minlength=10)
    for n in (10, 333, 1000, 1796):
        sub = subsample_dataset(ds, n, seed=5)
        counts = np.bincount(sub.y.numpy(), minlength=10)
        assert len(sub) == n and counts.sum() == n
        assert np.all(np.abs(counts - full * n / len(ds)) < 1), (n, counts)
    a, b, c = (subsample_dataset(ds, 500, seed=s) for s in (1, 1, 2))
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and a.content_hash == b.content_hash
    assert not torch.equal(a.x, c.x) and a.content_hash != c.content_hash
    assert len({a.content_hash, ds.content_hash, subsample_dataset(ds, 501, seed=1).content_hash}) == 3
    assert a.name == 'digits' and a.num_classes == 10 and a.kind == ds.kind
    assert a.source['path'] == ds.source['path'] and (a.source['subsample'], a.source['subsample_seed']) == (500, 1)
    # the rows are the parent's rows, in the parent's order
    rows = {tuple(r) for r in ds.x.view(len(ds), -1).numpy().round(4).tolist()}
    assert all(tuple(r) in rows for r in a.x.view(len(a), -1).numpy().round(4).tolist()[:50])


def test_subsample_zero_or_all_is_the_pool_itself():
    ds = load_dataset('digits')
    assert subsample_dataset(ds, 0, 3) is ds and subsample_dataset(ds, len(ds), 3) is ds


@pytest.mark.parametrize('n,match', [(5, r'\[10, 1797\]'), (1798, r'\[10, 1797\]'), (-1, r'\[10, 1797\]'),
                                     (2.5, 'must be an integer'), (True, 'must be an integer')])
def test_subsample_out_of_range_names_the_allowed_range(n, match):
    with pytest.raises(ValueError, match=match):
        subsample_dataset(load_dataset('digits'), n, 7)


def test_splits_are_keyed_on_the_content(tmp_path):
    cache = ArtifactCache(tmp_path)
    ds = load_dataset('digits')
    a = get_splits(ds, cache=cache)
    other = MIADataset('digits', ds.x + 1.0, ds.y, ds.num_classes, ds.kind)  # another copy under the same name
    b = get_splits(other, cache=cache)
    get_splits(subsample_dataset(ds, 900, 7), cache=cache)
    entries = [p for p in (tmp_path / 'splits').iterdir()]
    assert len(entries) == 3
    np.testing.assert_array_equal(a.victim.train, b.victim.train)  # the protocol does not look at the content
    assert get_splits(ds, cache=cache).victim.train.tolist() == a.victim.train.tolist() and len(list((tmp_path / 'splits').iterdir())) == 3
    with pytest.raises(ValueError, match='holds 1797 samples'):
        get_splits(ds, 100, cache=cache)
    with pytest.raises(ValueError, match='pool size'):
        get_splits('digits', cache=cache)


# ---------------------------------------------------------------- the study's splits, index for index
def _study(pool, seed):
    rest, test = train_test_split(pool, test_size=0.45, random_state=seed)
    train, dev = train_test_split(rest, test_size=0.1818, random_state=seed)
    return train, dev, test


@pytest.mark.parametrize('n', [60000, 1797])
def test_every_split_is_the_studys(n):
    seed = 7
    victim_idx, pool = train_test_split(range(n), test_size=0.5, random_state=seed)
    s = make_splits(n, seed=seed, num_shadows=5)
    ref = [_study(victim_idx, seed)] + [_study(pool, seed + i) for i in range(5)]
    for k, (ours, theirs) in enumerate(zip([s.victim] + s.shadows, ref)):
        for part, t in zip(('train', 'dev', 'test'), theirs):
            np.testing.assert_array_equal(getattr(ours, part), np.sort(t), err_msg=f'model {k} {part}')
    # the v1 protocol (sorted pool) would differ: the test can fail
    assert not np.array_equal(np.sort(_study(sorted(pool), seed)[0]), s.shadows[0].train)


def test_split_protocol_is_v2_and_old_entries_are_not_reused(tmp_path):
    assert SPLIT_PROTOCOL == 'yuan-zhang-2022/v2'
    cache = ArtifactCache(tmp_path)
    ds = load_dataset('digits')
    v1_key = dict(dataset='digits', n=1797, seed=7, num_shadows=5, test_frac=0.45, dev_frac=0.1818, protocol='yuan-zhang-2022/v1')
    cache.load_or_build('splits', v1_key, lambda: {'n': np.array(1797), 'seed': np.array(7)}, fmt='npz')
    get_splits('digits', 1797, cache=cache); get_splits(ds, cache=cache)
    assert len(list((tmp_path / 'splits').iterdir())) == 3
