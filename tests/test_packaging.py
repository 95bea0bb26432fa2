"""Packaging: one version everywhere, and every file organseg reads at run time reachable as package data.

The wheel itself (built, installed in a fresh environment, run from elsewhere) is checked by
.ci/package_check.sh (`make package-check`); these tests catch the same mistakes earlier, in the test suite.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
from importlib import resources
from pathlib import Path

import pytest

import organseg
import organseg.study.demo as demo
from organseg.cli.main import main
from organseg.training.config import list_presets, load_config, presets_dir

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = Path(organseg.__file__).resolve().parent


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python >= 3.11")
    path = ROOT / "pyproject.toml"
    if not path.is_file():
        pytest.skip(f"{path} is absent: the tests run outside a source tree")
    return tomllib.loads(path.read_text(encoding="utf-8"))


def _package_dirs_of(dist: importlib.metadata.Distribution) -> set[Path]:
    """Where ``dist`` installed the organseg package: beside its metadata (a wheel install), or in a folder
    its ``.pth`` file puts on ``sys.path`` (an editable install)."""
    dirs = {Path(str(dist.locate_file("organseg"))).resolve()}
    for file in dist.files or []:
        if file.suffix != ".pth":
            continue
        for line in Path(str(dist.locate_file(file))).read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith(("#", "import ")):
                dirs.add((Path(line) / "organseg").resolve())
    return dirs


def test_version_equals_the_installed_metadata():
    try:
        dist = importlib.metadata.distribution("organseg")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("organseg is imported from a source folder, not installed (no metadata to compare)")
    if PACKAGE_DIR not in _package_dirs_of(dist):
        pytest.skip(
            f"organseg is imported from {PACKAGE_DIR}, not from the installed distribution "
            f"{dist.metadata['Name']} {dist.version} (PYTHONPATH points elsewhere)"
        )
    assert dist.version == organseg.__version__, (
        f"installed metadata says {dist.version}, organseg.__version__ is {organseg.__version__}: "
        "the install is stale, reinstall (make test does; or pip install -e .)"
    )


def test_cli_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"organseg {organseg.__version__}"


def test_every_preset_is_a_package_resource_and_loads():
    configs = resources.files("organseg") / "configs"
    shipped = sorted(Path(r.name).stem for r in configs.iterdir() if r.name.endswith(".yaml"))
    assert shipped and shipped == list_presets()
    assert Path(str(configs)) == presets_dir()
    for name in shipped:
        assert isinstance(load_config(name), dict) and load_config(name), name
    # The demo trains from presets by name: each must ship.
    for model in demo.DEMO["models"]:
        assert demo.DEMO["preset"].format(model=model) in shipped


def test_package_data_covers_every_non_python_file():
    """A data file added under src/organseg without a package-data pattern would be missing from the wheel."""
    patterns = _pyproject()["tool"]["setuptools"]["package-data"]["organseg"]
    data = [
        p.relative_to(PACKAGE_DIR).as_posix()
        for p in PACKAGE_DIR.rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
    ]
    assert data, f"no data files under {PACKAGE_DIR} (the presets should be there)"
    uncovered = [f for f in data if not any(fnmatch.fnmatch(f, pat) for pat in patterns)]
    assert not uncovered, f"not in [tool.setuptools.package-data] organseg = {patterns}: {uncovered}"


def test_release_metadata_is_spdx_with_one_version_source():
    project = _pyproject()
    meta = project["project"]
    assert meta["license"] == "Apache-2.0" and meta["license-files"] == ["LICENSE"]
    # setuptools refuses a License classifier beside an SPDX expression.
    assert not [c for c in meta["classifiers"] if c.startswith("License ::")]
    assert "version" not in meta and "version" in meta["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "organseg.__version__"}
    assert "setuptools>=77" in project["build-system"]["requires"]  # the first with PEP 639 licence fields
    license_text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text


def test_changelog_has_a_section_for_this_version():
    path = ROOT / "CHANGELOG.md"
    if not path.is_file():
        pytest.skip(f"{path} is absent: the tests run outside a source tree")
    headings = [line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("## ")]
    assert any(h.split()[1] == organseg.__version__ for h in headings), (
        f"CHANGELOG.md has no '## {organseg.__version__}' section: {headings}"
    )
