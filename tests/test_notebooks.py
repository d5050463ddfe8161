"Every notebook in nbs/ is executed by nbdev_test (which sets IN_TEST=1): its lesson cells are unit tests."
import subprocess
import sys
from pathlib import Path

import pytest

NBS = Path(__file__).resolve().parent.parent / 'nbs'
NOTEBOOKS = sorted(NBS.glob('*.ipynb'))


def test_notebooks_found():
    assert len(NOTEBOOKS) >= 4, f'expected the project notebooks in {NBS}'


@pytest.mark.parametrize('nb', NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(nb):
    exe = Path(sys.executable).with_name('nbdev_test')
    cmd = [str(exe) if exe.exists() else 'nbdev_test', '--path', nb.name]
    r = subprocess.run(cmd, cwd=NBS, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, f'{nb.name} failed:\n{r.stdout[-6000:]}\n{r.stderr[-6000:]}'
