"The package's shape: no module reaches into another's private names, and the report stack stays light."
import ast, subprocess, sys
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / 'mia_pruning'


def test_no_module_imports_another_modules_underscore_names():
    bad = []
    for f in sorted(PKG.glob('*.py')):
        if f.name == '_modidx.py': continue
        for node in ast.walk(ast.parse(f.read_text(encoding='utf-8'))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or '').startswith('mia_pruning')):
                bad += [f'{f.name}: from {"." * node.level}{node.module or ""} import {a.name}' for a in node.names
                        if a.name.startswith('_') and a.name != '__version__']
    assert not bad, bad


def test_the_evidence_exposure_claims_and_docs_modules_import_without_torch():
    code = 'import sys, mia_pruning.evidence, mia_pruning.exposure, mia_pruning.claims, mia_pruning.docs; print("torch" in sys.modules)'
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == 'False', (r.stdout, r.stderr)


def test_committed_outputs_stay_below_the_budget():
    "Everything committed under outputs/ (tables, figures, packed run folders) stays below 60 MB (issue 26's budget)."
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run(['git', 'ls-files', '-z', 'outputs'], cwd=root, capture_output=True)
    if r.returncode: import pytest; pytest.skip('not a git checkout')
    files = [root / f for f in r.stdout.decode().split('\0') if f]
    total = sum(f.stat().st_size for f in files if f.is_file())
    assert files and total < 60_000_000, f"outputs/ holds {total / 1e6:.1f} MB committed"


def test_committed_parts_hold_no_path_of_the_machine_that_ran_them():
    "Packed run folders (outputs/<grid>/parts/*.zip) name no checkout, home or temp folder: their paths are relative (runs.portable_paths)."
    import re, zipfile
    root = Path(__file__).resolve().parents[1]
    packs = sorted(root.glob('outputs/*/parts/*.zip'))
    private = re.compile(rb'"(/work/|/home/|/root/|/tmp/|/Users/|[A-Z]:\\\\)')
    for p in packs:
        with zipfile.ZipFile(p) as z:
            bad = [n for n in z.namelist() if n.endswith(('.json', '.ipynb')) and private.search(z.read(n))]
        assert not bad, f'{p.name}: {bad[:3]} name a folder of the machine that ran them'
