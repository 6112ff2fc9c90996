#!/usr/bin/env bash
# Refresh constraints.txt: resolve jobline with its test extra in a brand-new virtual environment
# (no constraints), check the result with `pip check`, and write every installed distribution's
# exact version. The README's two commands and .ci/run install with `-c constraints.txt`, so every
# machine gets the set the tests last ran against. Run it after changing a dependency in
# pyproject.toml, then run the tests, and commit both files together.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="$(mktemp -d)/venv"
trap 'rm -rf "$(dirname "$venv")"' EXIT
python -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[test]'
"$venv/bin/python" -m pip check
{
    echo "# The full resolved set of jobline's dependencies (test extra included), written by"
    echo "# scripts/lock.sh on $("$venv/bin/python" -c 'import platform; print("Python", platform.python_version())')."
    echo "# Install with: python -m pip install -c constraints.txt -e '.[test]'"
    "$venv/bin/python" -m pip freeze --exclude-editable --all | grep -v -E '^(pip|setuptools|wheel)=='
} > constraints.txt
echo "lock.sh: wrote constraints.txt ($(grep -c '==' constraints.txt) pins)" >&2
