"Shared pytest setup: keep every test on the CPU-sized defaults and out of the user's caches."
import os, sys
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


# ---------------------------------------------------------------- nothing borrowed from outside the declared environment
def declared_distributions(root: str = 'mia_pruning', extras: tuple = ('dev', 'tabular')) -> set:
    "The distributions the project declares (its requirements and those extras'), with everything they require in turn."
    import re
    from importlib.metadata import requires, PackageNotFoundError
    from packaging.requirements import Requirement
    norm = lambda n: re.sub(r'[-_.]+', '-', n).lower()
    seen, done, todo = set(), set(), [(root, set(extras))]
    while todo:
        name, want = todo.pop()
        if (norm(name), frozenset(want)) in done: continue  # (a distribution asked for again with other extras is read again)
        done.add((norm(name), frozenset(want))); seen.add(norm(name))
        try: reqs = requires(name) or []
        except PackageNotFoundError: continue  # declared but not installed: an optional dependency nobody asked for
        for r in map(Requirement, reqs):
            env = [{'extra': e} for e in want] or [{'extra': ''}]
            if r.marker is None or any(r.marker.evaluate(e) for e in env): todo.append((r.name, set(r.extras)))
    return seen


def undeclared_imports(modules=None) -> list[str]:
    """Top-level modules imported in this process that no declared distribution provides (a test that borrows a package
    the environment does not declare), or that live outside this environment and the standard library."""
    import re, sysconfig
    from importlib.metadata import packages_distributions
    norm = lambda n: re.sub(r'[-_.]+', '-', n).lower()
    declared, owners = declared_distributions(), packages_distributions()
    here = os.path.dirname(os.path.abspath(__file__))
    stdlib = {os.path.realpath(sysconfig.get_path(k)) for k in ('stdlib', 'platstdlib')}
    out = []
    for name, mod in sorted((modules if modules is not None else sys.modules).items()):
        if '.' in name or name in sys.stdlib_module_names or name in sys.builtin_module_names or name.startswith('__'): continue
        if name in ('sitecustomize', 'usercustomize'): continue  # the interpreter's own start-up hooks (Debian ships one), not a package
        f = os.path.realpath(getattr(mod, '__file__', None) or '')
        if not f or f.startswith(here) or any(f.startswith(s + os.sep) and 'site-packages' not in f for s in stdlib): continue
        parts = f.split(os.sep)
        top = parts[parts.index('site-packages') + 1].split('.')[0] if 'site-packages' in parts[:-1] else name
        dists = owners.get(name) or owners.get(top)  # an extension module a package put on the top level (scipy's, pandas')
        if dists and any(norm(d) in declared for d in dists): continue
        if not dists and f.startswith(os.path.realpath(os.path.dirname(here))): continue  # the project's own package, from the clone
        out.append(f'{name} ({f}; from {", ".join(dists) if dists else "no installed distribution"})')
    return out


@pytest.fixture(scope='session', autouse=True)
def _only_declared_packages():
    "With MIA_PRUNING_CHECK_IMPORTS=1 (CI): the session fails if any test imported a package the environment does not declare."
    yield
    if os.environ.get('MIA_PRUNING_CHECK_IMPORTS') == '1':
        bad = undeclared_imports()
        if bad: pytest.fail('imported, but not declared by mia_pruning or its dev/tabular extras: ' + '; '.join(bad), pytrace=False)
