#!/usr/bin/env bash
# The test command of the README: installs what the tests need, then runs them all.
#
# - a Docker engine (scripts/ensure-docker.sh: docker.io and busybox-static from apt, dockerd);
# - jobline with its test extra (pip);
# - the test suite (pytest), against the PostgreSQL and RabbitMQ servers on 127.0.0.1.
# With CI=true a missing service fails the run; elsewhere the tests that need it are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! bash scripts/ensure-docker.sh; then
    if [ "${CI:-}" = "true" ]; then
        echo "test.sh: no Docker engine, and CI=true" >&2
        exit 1
    fi
    echo "test.sh: no Docker engine; the container tests will be skipped" >&2
fi
python -m pip install --quiet --disable-pip-version-check -e '.[test]'
exec python -m pytest "$@"
