"README.md is generated from nbs/index.ipynb and must match it; CI runs exactly the README's test command."
from pathlib import Path

from mia_pruning.core import render_readme

ROOT = Path(__file__).resolve().parent.parent


def test_readme_is_in_sync_with_index_notebook():
    assert (ROOT / 'README.md').read_text() == render_readme(ROOT / 'nbs' / 'index.ipynb'), \
        'README.md is stale: run python -c "from mia_pruning.core import write_readme; write_readme()"'


def test_ci_runs_the_readme_test_command():
    readme, ci = (ROOT / 'README.md').read_text(), (ROOT / '.ci' / 'run').read_text()
    cmd = 'python -m pytest -n 2 tests'
    assert cmd in readme and cmd in ci.splitlines()[-1]
