"""The package installs without a clone: the wheel carries the experiment template (copied from nbs/ at build time,
never kept in the tree), and a non-editable install runs a cell from an empty folder."""
import json, os, subprocess, sys, zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope='module')
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp('wheel')
    r = subprocess.run([sys.executable, '-m', 'pip', 'wheel', str(ROOT), '--no-deps', '--no-build-isolation', '-q', '-w', str(out)],
                       capture_output=True, text=True, timeout=600, cwd=out)
    assert r.returncode == 0, r.stderr[-3000:]
    (whl,) = out.glob('mia_pruning-*.whl')
    return whl


def test_the_wheel_holds_the_template_identical_to_the_notebook(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        assert 'mia_pruning/templates/experiment.ipynb' in names
        assert z.read('mia_pruning/templates/experiment.ipynb') == (ROOT / 'nbs' / 'experiment.ipynb').read_bytes()
        assert not [n for n in names if n.endswith('.ipynb') and n != 'mia_pruning/templates/experiment.ipynb']


def test_the_template_is_not_kept_in_the_tree():
    "The one source is nbs/experiment.ipynb: a second copy in the package folder could drift from it."
    assert not (ROOT / 'mia_pruning' / 'templates').exists() or not any((ROOT / 'mia_pruning' / 'templates').iterdir())


@pytest.mark.slow
def test_a_non_editable_install_runs_a_cell_from_an_empty_folder(wheel, tmp_path):
    venv = tmp_path / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', '--system-site-packages', str(venv)], check=True, timeout=300)
    py = venv / 'bin' / 'python'
    r = subprocess.run([str(py), '-m', 'pip', 'install', '--no-deps', '--no-index', '-q', str(wheel)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    work = tmp_path / 'empty'; work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ('MIA_PRUNING_TEMPLATE', 'PYTHONPATH')}
    env.update(OMP_NUM_THREADS='1', MIA_PRUNING_CACHE=str(tmp_path / 'cache'))
    where = subprocess.run([str(py), '-c', 'import mia_pruning, mia_pruning.grid as g; print(mia_pruning.__file__); print(g.template_path())'],
                           capture_output=True, text=True, cwd=work, env=env, timeout=300)
    assert where.returncode == 0, where.stderr[-3000:]
    mod, tpl = where.stdout.split()
    assert str(venv) in mod and str(venv) in tpl, where.stdout  # the installed copy, not the clone
    r = subprocess.run([str(venv / 'bin' / 'mia-pruning'), 'run', 'dataset=digits', 'arch=mlp', 'num_shadows=1', 'epochs=2',
                        'attacks=gap,conf', 'num_references=0', 'n_boot=0', '--out', str(work / 'outputs')],
                       capture_output=True, text=True, cwd=work, env=env, timeout=600)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    runs = list((work / 'outputs').glob('**/runs/*/metrics.json'))
    assert len(runs) == 1 and json.loads(runs[0].read_text())
