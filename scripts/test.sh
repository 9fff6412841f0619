#!/usr/bin/env bash
# Set up attnlens with its dev extras and run the whole test suite.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh" dev
cd "$root"
# Tests pin torch to one thread themselves (tests/conftest.py); keep BLAS from oversubscribing too.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
exec .venv/bin/python -m pytest -q "$@"
