#!/usr/bin/env bash
# Install the CongoDB test server here: runtime dependencies from package.json, then the
# @push.rocks/smartmongo@2.2.0 tarball unpacked into vendor/ (its own npm install fails on
# missing dependencies, so it is not installed as a dependency). Idempotent.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -d node_modules/mingo ] || [ ! -d node_modules/bson ]; then
  npm install --no-audit --no-fund --loglevel=error
fi
if [ ! -f vendor/package/dist_ts/congodb/index.js ]; then
  rm -rf vendor && mkdir -p vendor
  tgz=$(npm pack --loglevel=error @push.rocks/smartmongo@2.2.0 | tail -n 1)
  tar xzf "$tgz" -C vendor
  rm -f "$tgz"
fi
