"Every notebook in nbs/ is executed by nbdev_test (which sets IN_TEST=1): its lesson cells are unit tests."
import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / 'nbs'
NOTEBOOKS = sorted(NBS.glob('*.ipynb'))


def _default_exp(nb: Path) -> str | None:
    for c in json.loads(nb.read_text(encoding='utf-8'))['cells']:
        m = re.match(r'#\|\s*default_exp\s+(\S+)', ''.join(c['source']))
        if c['cell_type'] == 'code' and m: return m.group(1)
    return None


def test_every_module_has_its_notebook_and_every_notebook_is_listed():
    "The package is exactly what the notebooks export, and the README's table names every notebook."
    exported = {m for m in map(_default_exp, NOTEBOOKS) if m}
    modules = {p.stem for p in (ROOT / 'mia_pruning').glob('*.py') if not p.stem.startswith('_')}
    assert modules == exported, f'modules without a notebook: {sorted(modules - exported)}; notebooks without a module: {sorted(exported - modules)}'
    index = (NBS / 'index.ipynb').read_text(encoding='utf-8')
    missing = [nb.stem for nb in NOTEBOOKS if nb.stem != 'index' and f'`{nb.stem.split("_")[0]}' not in index and f'`{nb.stem}`' not in index]
    assert not missing, f'notebooks not in the table of nbs/index.ipynb: {missing}'


def test_experiment_template_parameters_are_the_cell_defaults():
    "The papermill template's parameters cell declares exactly CELL_DEFAULTS (same names, order, types, values) plus out_dir."
    from mia_pruning.pipeline import CELL_DEFAULTS
    cells = json.loads((NBS / 'experiment.ipynb').read_text(encoding='utf-8'))['cells']
    par = [c for c in cells if 'parameters' in c.get('metadata', {}).get('tags', [])]
    assert len(par) == 1, 'the template needs exactly one cell tagged parameters'
    decl = [(n.target.id, n.annotation.id, ast.literal_eval(n.value)) for n in ast.parse(''.join(par[0]['source'])).body]
    want = [(k, type(v).__name__, v) for k, v in CELL_DEFAULTS.items()] + [('out_dir', 'str', '')]
    assert decl == want


@pytest.mark.parametrize('nb', NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(nb):
    exe = Path(sys.executable).with_name('nbdev_test')
    cmd = [str(exe) if exe.exists() else 'nbdev_test', '--path', nb.name]
    r = subprocess.run(cmd, cwd=NBS, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, f'{nb.name} failed:\n{r.stdout[-6000:]}\n{r.stderr[-6000:]}'
