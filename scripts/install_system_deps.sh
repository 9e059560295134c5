#!/usr/bin/env bash
# Installs the Debian packages the test suite runs for real, if they are missing:
#   promtool (package prometheus) - checks the /metrics exposition format;
#   chromium - renders the bot's --html report headless (tests/test_bot_report.py);
#   redis-server (package redis-server) - the result cache's shared tier (cache.redis_url);
#   gcc and the Python headers (gcc, python3-dev) - `make native` builds the C hot path.
# Idempotent: does nothing when everything is present. Needs root (or sudo).
set -euo pipefail

missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
python3 -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  || missing+=(python3-dev)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    echo "install_system_deps: need root to apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi
echo "install_system_deps: apt-get install ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
