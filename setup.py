"""Classic nbdev 2 setup.py: every field comes from settings.ini (nbdev 2.4.14 does not write pyproject.toml here)."""
from configparser import ConfigParser
from pathlib import Path
import shutil
import setuptools
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

cfg = ConfigParser(delimiters=['='])
cfg.read('settings.ini', encoding='utf-8')
cfg = cfg['DEFAULT']

for key in 'version description keywords author author_email'.split():
    assert key in cfg, f'settings.ini is missing {key!r}'

licenses = {'apache2': ('Apache Software License 2.0', 'OSI Approved :: Apache Software License')}
statuses = ['1 - Planning', '2 - Pre-Alpha', '3 - Alpha', '4 - Beta', '5 - Production/Stable', '6 - Mature', '7 - Inactive']
py_versions = '3.10 3.11 3.12 3.13'.split()
min_python = cfg['min_python']
lic = licenses[cfg['license']]
requirements = cfg.get('requirements', '').split()
dev_requirements = cfg.get('dev_requirements', '').split()
tabular_requirements = cfg.get('tabular_requirements', '').split()  # the mlbench datasets' reader (R's .rda files)

TEMPLATES = [Path('nbs') / 'experiment.ipynb', Path('nbs') / 'audit.ipynb']  # the papermill templates: their one source is the notebooks


class build_py_with_template(build_py):
    "Copy the templates nbs/experiment.ipynb and nbs/audit.ipynb into the built package's mia_pruning/templates/ (never kept in the tree)."
    def run(self):
        super().run()
        for tpl in TEMPLATES:
            if not tpl.is_file(): raise FileNotFoundError(f'{tpl} is missing: the package cannot run a grid or an audit without it')
            dest = Path(self.build_lib) / cfg['lib_name'] / 'templates' / tpl.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(tpl, dest)


class sdist_with_sources(sdist):
    "An sdist that can build the wheel again: it carries settings.ini and the template notebook."
    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        for f in (Path('settings.ini'), *TEMPLATES):
            (Path(base_dir) / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, Path(base_dir) / f)


setuptools.setup(
    cmdclass={'build_py': build_py_with_template, 'sdist': sdist_with_sources},
    name=cfg['lib_name'],
    version=cfg['version'],
    description=cfg['description'],
    long_description=Path('README.md').read_text(encoding='utf-8') if Path('README.md').exists() else '',
    long_description_content_type='text/markdown',
    keywords=cfg['keywords'],
    author=cfg['author'],
    author_email=cfg['author_email'],
    url=cfg['git_url'],
    license=lic[0],
    classifiers=[
        'Development Status :: ' + statuses[int(cfg['status'])],
        'Intended Audience :: ' + cfg['audience'].title(),
        'License :: ' + lic[1],
        'Natural Language :: ' + cfg['language'].title(),
    ] + ['Programming Language :: Python :: ' + v for v in py_versions[py_versions.index(min_python):]],
    packages=setuptools.find_packages(include=[cfg['lib_name'], cfg['lib_name'] + '.*']),
    include_package_data=True,
    install_requires=requirements,
    extras_require={'dev': dev_requirements, 'tabular': tabular_requirements},
    python_requires='>=' + min_python,
    zip_safe=False,
    entry_points={
        'console_scripts': cfg.get('console_scripts', '').split(),
        'nbdev': [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"],
    },
)
