#!/usr/bin/env bash
# Set up cryopose on a fresh machine: PyTorch (CPU build) first, then the package with its
# test and documentation tools (the "test" and "docs" extras), then (unless --no-relion)
# RELION 3.1, the oracle the tests compare against, and Chromium, which the tests render the
# HTML reports in.
set -euo pipefail
cd "$(dirname "$0")/.."
with_relion=1
for arg in "$@"; do
  case "$arg" in
    --no-relion) with_relion=0 ;;
    *) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done
py=${PYTHON:-python3}
# torch first: with 2.13.0 installed, the package's "torch>=2.1" pulls nothing more.
"$py" -m pip install -q --disable-pip-version-check "torch==2.13.0"
"$py" -m pip install -q --disable-pip-version-check -e ".[test,docs]"
# Debian packages the tests use: RELION 3.1 (the oracle, unless --no-relion) and Chromium (renders
# the HTML reports; without its recommended desktop packages). Only what is missing is installed.
need_relion=0; need_chromium=0
if [ "$with_relion" = 1 ] && ! command -v relion_project >/dev/null 2>&1; then need_relion=1; fi
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then need_chromium=1; fi
if [ "$need_relion" = 1 ] || [ "$need_chromium" = 1 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    if [ "$need_relion" = 1 ]; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq relion >/dev/null
    fi
    if [ "$need_chromium" = 1 ]; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
    fi
  else
    if [ "$need_relion" = 1 ]; then
      echo "setup.sh: RELION 3.1 missing; run 'sudo apt-get install -y relion' for the oracle tests" >&2
    fi
    if [ "$need_chromium" = 1 ]; then
      echo "setup.sh: Chromium missing; run 'sudo apt-get install -y chromium' for the report tests" >&2
    fi
  fi
fi
echo "cryopose set up: $("$py" -c 'import cryopose; print(cryopose.__version__)')"
