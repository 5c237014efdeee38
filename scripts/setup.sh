#!/usr/bin/env bash
# Set up a fresh machine for altnn: the Fashion-MNIST system copy (Debian, as root),
# a virtual environment in .venv with the project and its dependencies.
#   scripts/setup.sh          # what `dvc repro` needs
#   scripts/setup.sh --test   # plus pytest and ruff
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
if [[ "${1:-}" == "--test" ]]; then
  extras="[test]"
fi

# Debian's package puts the four gzipped IDX files under /usr/share/datasets/fashion-mnist.
# Elsewhere the download stage fetches them from the official mirrors.
if [[ ! -d /usr/share/datasets/fashion-mnist ]] && command -v apt-get >/dev/null && [[ "$(id -u)" == 0 ]]; then
  echo "setup: installing Debian's dataset-fashion-mnist"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null \
    || echo "setup: dataset-fashion-mnist unavailable; the download stage will use the official mirrors"
fi

python="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv with $("$python" --version)"
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# Pinned because these builds are known to work together. pip takes them from a local
# wheel cache where one is configured, otherwise from PyPI (several GB with CUDA).
.venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install --quiet -e ".${extras}"
echo "setup: done; activate with: source .venv/bin/activate"
