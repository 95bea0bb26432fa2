#!/usr/bin/env bash
# Packaging check: build the sdist and the wheel (wheel from the sdist, as pip and package indexes do), check
# their metadata, install the wheel in a fresh virtual environment and run organseg there from a folder outside
# the checkout, so a file missing from the wheel or the sdist fails here instead of on a user's machine.
# `make package-check` runs it alone; CI runs it after `make test`.
#   PY     the development environment's python, which has build and twine (default .venv/bin/python)
#   TORCH  the torch requirement for the fresh environment (default torch==2.13.0: on this machine's disk;
#          any other request pulls a multi-GB CUDA build)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
TORCH=${TORCH:-torch==2.13.0}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/organseg-package.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
START=$SECONDS
step() { printf '== package-check [%4ds] %s\n' $((SECONDS - START)) "$*"; }
fail() { printf 'package-check: FAILED: %s\n' "$*" >&2; exit 1; }

# Build from a copy of what git would commit (tracked and new, not ignored files): the developer's tree gets
# no src/organseg.egg-info, and stray ignored files (build/, caches) cannot leak into the sdist.
step "copy the source tree"
mkdir "$WORK/tree"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do if [[ -e $f || -L $f ]]; then printf '%s\0' "$f"; fi; done \
        | tar --null -T - -cf - | tar -xf - -C "$WORK/tree"
else
    tar --exclude=./.venv --exclude=./.git --exclude=./demo_out --exclude=./runs --exclude=./dist --exclude=./build \
        --exclude="*.egg-info" --exclude=__pycache__ -cf - . | tar -xf - -C "$WORK/tree"
fi

step "python -m build (sdist, then the wheel from the sdist)"
# PYTHONDONTWRITEBYTECODE makes setuptools warn "byte-compiling is disabled" (the wheel has no .pyc anyway):
# unset, so that every warning left comes from organseg's own packaging.
if ! env -u PYTHONDONTWRITEBYTECODE "$PY" -m build --outdir "$WORK/dist" "$WORK/tree" >"$WORK/build.log" 2>&1
then
    cat "$WORK/build.log"; fail "python -m build"
fi
# Deprecations become build errors later (setuptools names a date); catch them, and any other setuptools
# warning (its "!!" banners, "warning:" lines such as a MANIFEST.in pattern matching nothing), while they
# are warnings.
if grep -n -i -E "deprecat" "$WORK/build.log"; then
    fail "the build printed a deprecation warning (lines above; full log: python -m build)"
fi
if grep -n -E "^warning:|^!!$|Setuptools[A-Za-z]*Warning" "$WORK/build.log"; then
    fail "the build printed a warning (lines above; full log: python -m build)"
fi
grep -E "^Successfully built|setuptools==" "$WORK/build.log"
echo "build log: $(wc -l <"$WORK/build.log") lines, no deprecation, no setuptools warning"

step "twine check --strict"
"$PY" -m twine check --strict "$WORK"/dist/*

step "archive contents"
"$PY" - "$WORK/tree" "$WORK/dist" <<'PY'
"""Every file of the package is in the wheel; licence, version and sdist contents are what a release needs."""
import email
import re
import sys
import tarfile
import zipfile
from pathlib import Path

tree, dist = Path(sys.argv[1]), Path(sys.argv[2])
version = re.search(r'^__version__ = "([^"]+)"', (tree / "src/organseg/__init__.py").read_text(), re.M)[1]
wheel = dist / f"organseg-{version}-py3-none-any.whl"
sdist = dist / f"organseg-{version}.tar.gz"
problems = [f"{p.name} missing (version {version})" for p in (wheel, sdist) if not p.is_file()]
if problems:
    sys.exit("; ".join(problems + [f"built: {sorted(p.name for p in dist.iterdir())}"]))

names = set(zipfile.ZipFile(wheel).namelist())
package = tree / "src"
expected = {
    p.relative_to(package).as_posix()
    for p in (package / "organseg").rglob("*")
    if p.is_file() and "__pycache__" not in p.parts
}
missing = sorted(expected - names)
if missing:
    problems.append(f"wheel lacks {len(missing)} package file(s): {', '.join(missing)}")
info = f"organseg-{version}.dist-info"
if f"{info}/licenses/LICENSE" not in names:
    problems.append("wheel lacks the LICENSE file")
meta = email.message_from_bytes(zipfile.ZipFile(wheel).read(f"{info}/METADATA"))
for key, want in (("Version", version), ("License-Expression", "Apache-2.0"), ("License-File", "LICENSE")):
    if meta.get(key) != want:
        problems.append(f"wheel METADATA {key}: {meta.get(key)!r}, expected {want!r}")
if meta.get_all("Classifier") and any(c.startswith("License ::") for c in meta.get_all("Classifier")):
    problems.append("a License :: classifier beside the SPDX expression")

members = {m.split("/", 1)[1] for m in tarfile.open(sdist).getnames() if "/" in m}
for need in ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "tests/conftest.py"):
    if need not in members:
        problems.append(f"sdist lacks {need}")
if problems:
    sys.exit("archive check: " + "; ".join(problems))
print(f"wheel {wheel.name}: {wheel.stat().st_size / 1024:.0f} KiB, {len(names)} files; "
      f"sdist {sdist.name}: {sdist.stat().st_size / 1024:.0f} KiB, {len(members)} entries")
PY

step "fresh virtual environment: $TORCH, then the wheel"
# --no-compile: byte-compiling all of torch costs more than this short-lived environment gains from it.
"$PY" -m venv "$WORK/venv"
V="$WORK/venv/bin"
"$V/python" -m pip install -q --no-compile --disable-pip-version-check "$TORCH"
"$V/python" -m pip install -q --no-compile --disable-pip-version-check "$WORK"/dist/organseg-*.whl

# From a folder outside the checkout, with nothing of the checkout on the path: only the wheel is importable.
mkdir "$WORK/elsewhere"
cd "$WORK/elsewhere"
unset PYTHONPATH
step "organseg --version"
want=$("$V/python" -c 'import importlib.metadata as m; print("organseg", m.version("organseg"))')
got=$("$V/organseg" --version)
echo "$got"
[[ $got == "$want" ]] || fail "organseg --version says '$got', the installed metadata '$want'"
where=$("$V/python" -c 'import organseg; print(organseg.__file__)')
[[ $where == "$WORK/venv/"* ]] || fail "organseg imported from $where, not from the wheel install"

step "organseg info"
"$V/organseg" info

step "organseg demo --fast"
"$V/organseg" demo --fast --out "$WORK/elsewhere/demo" --device cpu
[[ -s $WORK/elsewhere/demo/comparison.md ]] || fail "organseg demo --fast wrote no comparison.md"

# The packaging tests again, now against the installed wheel: none may skip (the version check skips only
# where organseg is imported from outside its installed distribution).
step "tests/test_packaging.py against the wheel install"
"$V/python" -m pip install -q --no-compile --disable-pip-version-check "pytest>=7.4"
"$V/python" -m pytest -q -rs -p no:cacheprovider --rootdir "$WORK/tree" "$WORK/tree/tests/test_packaging.py" \
    | tee "$WORK/pytest.log"
if grep -q -i "skipped" "$WORK/pytest.log"; then fail "a packaging test skipped against the wheel install"; fi

step "passed"
