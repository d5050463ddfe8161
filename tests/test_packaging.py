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


def test_the_wheel_holds_the_templates_identical_to_the_notebooks(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        for t in ('experiment.ipynb', 'audit.ipynb'):  # the grid's cell template and the audit's
            assert f'mia_pruning/templates/{t}' in names
            assert z.read(f'mia_pruning/templates/{t}') == (ROOT / 'nbs' / t).read_bytes()
        assert sorted(n for n in names if n.endswith('.ipynb')) == ['mia_pruning/templates/audit.ipynb', 'mia_pruning/templates/experiment.ipynb']


def test_the_template_is_not_kept_in_the_tree():
    "The one source is nbs/experiment.ipynb: a second copy in the package folder could drift from it."
    assert not (ROOT / 'mia_pruning' / 'templates').exists() or not any((ROOT / 'mia_pruning' / 'templates').iterdir())


def venv_over_this_environment(venv: Path) -> Path:
    """A new venv that sees the packages of the environment under test (not the base interpreter's, as
    `--system-site-packages` would): a .pth file lists this environment's site-packages after the venv's own."""
    import site, sysconfig
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True, timeout=300)
    py = venv / 'bin' / 'python'
    own = subprocess.run([str(py), '-c', 'import sysconfig; print(sysconfig.get_path("purelib"))'], capture_output=True, text=True, check=True).stdout.strip()
    ours = [p for p in dict.fromkeys([*site.getsitepackages(), sysconfig.get_path('purelib'), sysconfig.get_path('platlib')]) if Path(p).is_dir()]
    (Path(own) / '_environment_under_test.pth').write_text('\n'.join(ours) + '\n')  # plain paths: their .pth files (our editable install) are not run
    return py


def test_a_venv_over_this_environment_sees_its_packages_but_not_the_clone(tmp_path):
    py = venv_over_this_environment(tmp_path / 'venv')
    r = subprocess.run([str(py), '-c', 'import pandas, torch, papermill; import importlib.util as u; print(u.find_spec("mia_pruning"))'],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == 'None'  # the editable install of the clone is not inherited: a wheel must be installed


@pytest.mark.slow
def test_a_non_editable_install_runs_a_cell_from_an_empty_folder(wheel, tmp_path):
    venv = tmp_path / 'venv'
    py = venv_over_this_environment(venv)
    r = subprocess.run([sys.executable, '-m', 'pip', '--python', str(py), 'install', '--no-deps', '--no-index', '-q', str(wheel)],
                       capture_output=True, text=True, timeout=600)  # (this environment's pip installs into the new venv)
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
