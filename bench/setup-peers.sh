#!/usr/bin/env bash
# Installs the peers the benchmarks measure side by side, outside the source
# tree's tracked files (under target/): QingCloud's Python SDK from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x target/peer-venv/bin/python ]; then
  python3 -m venv target/peer-venv
fi
target/peer-venv/bin/pip install -q --disable-pip-version-check qingcloud-sdk
echo "peer ready: target/peer-venv/bin/python ($(target/peer-venv/bin/pip show qingcloud-sdk | grep ^Version))"
