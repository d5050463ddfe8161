"The executed notebooks as documentation: committed with outputs, deterministic ones, and served by a real JupyterLab."
import json
import pytest
from mia_pruning.docs import (TEMPLATES, documentation_notebooks, notebooks_dir, output_problems, missing_outputs, has_images,
                              jupyter_server, server_notebook, output_mimes)

NOTEBOOKS = documentation_notebooks()
WITH_FIGURES = ('09_divergence', '12_report', '20_results', '21_claims')


def outputs_of(path):
    return [o for c in json.loads(path.read_text(encoding='utf-8'))['cells'] for o in c.get('outputs', []) or []]


def test_every_documentation_notebook_is_committed_with_outputs():
    assert len(NOTEBOOKS) >= 30 and not any(p.name in TEMPLATES for p in NOTEBOOKS)
    bare = [p.name for p in NOTEBOOKS if not outputs_of(p)]
    assert not bare, f'notebooks without any output: {bare} (run `mia-pruning notebooks`)'


@pytest.mark.parametrize('nb', NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_outputs_are_present_and_deterministic(nb):
    assert missing_outputs(nb) == [], f'{nb.name}: cells that show something when run have no committed output (run `mia-pruning notebooks {nb.stem}`)'
    assert output_problems(nb) == []


def test_stage_notebooks_show_figures():
    nbs = notebooks_dir()
    assert [n for n in WITH_FIGURES if not has_images(nbs / f'{n}.ipynb')] == []


def test_the_template_has_no_outputs_and_says_it_is_a_template():
    cells = json.loads((notebooks_dir() / 'experiment.ipynb').read_text(encoding='utf-8'))['cells']
    assert not any(c.get('outputs') for c in cells)
    assert 'template' in ''.join(cells[0]['source']).lower()


def test_jupyterlab_serves_the_results_notebook_with_its_figures():
    with jupyter_server(lab=True) as (url, token):
        model = server_notebook(url, token, 'nbs/20_results.ipynb')
    assert model['name'] == '20_results.ipynb' and model['format'] == 'json'
    assert 'image/png' in output_mimes(model['content'])


RERUN = ('07_metrics', '12a_claims')  # quick ones: a figure from code, and tables from the committed study


@pytest.mark.parametrize('stem', RERUN)
def test_reexecuting_a_notebook_writes_its_committed_outputs_again(stem):
    "What `mia-pruning notebooks` does to an unchanged notebook: the same outputs, byte for byte (figures included)."
    from mia_pruning.docs import execute_notebook
    src = notebooks_dir() / f'{stem}.ipynb'
    copy = src.with_name(f'.rerun-{stem}.ipynb')  # beside it (relative paths resolve as in place); dot files are not notebooks to nbdev
    copy.write_bytes(src.read_bytes())
    try:
        r = execute_notebook(copy)
        again, committed = (json.loads(p.read_text(encoding='utf-8'))['cells'] for p in (copy, src))
    finally:
        copy.unlink(missing_ok=True)
    assert r['problems'] == [] and r['missing'] == []
    changed = [i for i, (a, b) in enumerate(zip(again, committed)) if a.get('outputs') != b.get('outputs')]
    assert len(again) == len(committed) and changed == [], f'{stem}: cells {changed} show other outputs when re-executed'
