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
