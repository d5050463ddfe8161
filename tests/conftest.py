"Shared pytest setup: keep every test on the CPU-sized defaults and out of the user's caches."
import os
import pytest

os.environ.setdefault('IN_TEST', '1')
os.environ.setdefault('MIA_PRUNING_DEVICE', 'cpu')


@pytest.fixture(autouse=True)
def _isolated_outputs(tmp_path, monkeypatch):
    "Each test writes its artifacts under its own temporary folder."
    monkeypatch.setenv('MIA_PRUNING_OUTPUTS', str(tmp_path / 'outputs'))
    monkeypatch.setenv('MIA_PRUNING_CACHE', str(tmp_path / 'outputs' / 'cache'))
    monkeypatch.setenv('MIA_PRUNING_DATA', str(tmp_path / 'data'))
    yield
