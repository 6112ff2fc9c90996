#!/usr/bin/env bash
# The test command of the README: installs what the tests need, then runs them all.
#
# - a Docker engine (scripts/ensure-docker.sh: docker.io and busybox-static from apt, dockerd);
# - a virtual environment .venv with jobline and its test extra, at the exact versions of
#   constraints.txt, checked by `pip check` (a venv, so packages the machine's own Python carries
#   can neither break nor hide a requirement);
# - Debian's chromium from apt (skipped when present), for the console's browser tests;
# - the test suite (pytest), against the PostgreSQL and RabbitMQ servers on 127.0.0.1.
# With CI=true a missing service fails the run; elsewhere the tests that need it are skipped.
# Arguments are passed to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! bash scripts/ensure-docker.sh; then
    if [ "${CI:-}" = "true" ]; then
        echo "test.sh: no Docker engine, and CI=true" >&2
        exit 1
    fi
    echo "test.sh: no Docker engine; the container tests will be skipped" >&2
fi
# The console's browser tests drive Debian's Chromium (Playwright never downloads a browser).
if ! command -v chromium >/dev/null 2>&1; then
    if ! { apt-get install -y chromium >/dev/null 2>&1 \
        || { apt-get update >/dev/null 2>&1 && apt-get install -y chromium >/dev/null 2>&1; }; }; then
        echo "test.sh: could not install chromium; the browser tests will be skipped" >&2
    fi
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
python -m pip check
exec python -m pytest "$@"
