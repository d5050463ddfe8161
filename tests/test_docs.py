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


PIXEL_TOLERANCE = (8, 0.01)  # a pixel differs when a channel moves by more than 8/255; at most 1% of pixels may differ


def png_pixels(b64: str):
    import base64, io
    import numpy as np
    from PIL import Image
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert('RGBA'), dtype=np.int16)


def figure_difference(a: str, b: str) -> float:
    "The fraction of pixels that differ beyond the channel tolerance between two base64 PNGs (1.0 when their sizes differ)."
    x, y = png_pixels(a), png_pixels(b)
    if x.shape != y.shape: return 1.0
    return float((abs(x - y).max(axis=-1) > PIXEL_TOLERANCE[0]).mean())


def same_outputs(a: list, b: list) -> bool:
    """Outputs equal as a reader sees them: text exactly, figures by their pixels within PIXEL_TOLERANCE (a PNG's bytes
    change with zlib, pillow or a patch release of the plotting stack while the picture does not)."""
    if len(a) != len(b): return False
    for x, y in zip(a, b):
        dx, dy = x.get('data', {}), y.get('data', {})
        if 'image/png' in dx and 'image/png' in dy:
            if figure_difference(dx['image/png'], dy['image/png']) > PIXEL_TOLERANCE[1]: return False
            x, y = {**x, 'data': {k: v for k, v in dx.items() if k != 'image/png'}}, {**y, 'data': {k: v for k, v in dy.items() if k != 'image/png'}}
        if x != y: return False
    return True


def test_figures_compare_by_pixels_within_the_tolerance():
    import base64, io
    import numpy as np
    from PIL import Image
    def png(arr):
        buf = io.BytesIO(); Image.fromarray(arr.astype(np.uint8)).save(buf, format='PNG', compress_level=9); return base64.b64encode(buf.getvalue()).decode()
    img = np.random.RandomState(0).randint(0, 256, (40, 50, 4))
    near = img.copy(); near[:2, :5] = (near[:2, :5] + 100) % 256  # 10 of 2,000 pixels: 0.5%
    far = img.copy(); far[:10] = (far[:10] + 100) % 256  # 25%
    out = lambda b: [{'output_type': 'display_data', 'data': {'image/png': b, 'text/plain': '<Figure>'}, 'metadata': {}}]
    assert same_outputs(out(png(img)), out(png(img)))
    assert figure_difference(png(img), png(near)) == 0.005 and same_outputs(out(png(img)), out(png(near)))
    assert not same_outputs(out(png(img)), out(png(far)))
    assert not same_outputs(out(png(img)), out(png(img[:39])))  # another size
    assert not same_outputs(out(png(img)), [{**out(png(img))[0], 'data': {'image/png': png(img), 'text/plain': '<Other>'}}])


RERUN = ('07_metrics', '12a_claims')  # quick ones: a figure from code, and tables from the committed study


@pytest.mark.parametrize('stem', RERUN)
def test_reexecuting_a_notebook_writes_its_committed_outputs_again(stem):
    "What `mia-pruning notebooks` does to an unchanged notebook: the same outputs (text byte for byte, figures pixel for pixel within PIXEL_TOLERANCE)."
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
    changed = [i for i, (a, b) in enumerate(zip(again, committed)) if not same_outputs(a.get('outputs') or [], b.get('outputs') or [])]
    assert len(again) == len(committed) and changed == [], f'{stem}: cells {changed} show other outputs when re-executed'
