#!/usr/bin/env bash
# Create .venv (if needed) and install attnlens with the pinned versions of constraints.txt.
# Usage: bash scripts/setup.sh [extra ...]   e.g. bash scripts/setup.sh dev
# Re-running is cheap: nothing is reinstalled unless pyproject.toml or constraints.txt changed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
extras="${1:-}"
if [ ! -x .venv/bin/python ]; then
  echo "attnlens setup: creating .venv with $($python --version 2>&1)"
  "$python" -m venv .venv
fi
# One stamp per set of extras, named by the hash of what was installed: a setup with the same
# pyproject.toml and constraints.txt and a subset of the installed extras (the quick start after the
# test setup) installs nothing; a changed pyproject.toml or constraints.txt reinstalls.
inputs="$( (cat pyproject.toml constraints.txt) | sha256sum | cut -c1-16)"
stamp=".venv/.attnlens-setup-$inputs-${extras:-base}"
if [ -z "$extras" ] && compgen -G ".venv/.attnlens-setup-$inputs-*" > /dev/null; then
  stamp="$(compgen -G ".venv/.attnlens-setup-$inputs-*" | head -n 1)"
fi
if [ ! -f "$stamp" ]; then
  echo "attnlens setup: installing dependencies (pinned in constraints.txt)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  # torch and torchvision first and pinned exactly, so that no other requirement pulls a different build.
  .venv/bin/python -m pip install --quiet $(grep -E '^(torch|torchvision)==' constraints.txt)
  spec="."
  [ -n "$extras" ] && spec=".[$extras]"
  .venv/bin/python -m pip install --quiet -c constraints.txt -e "$spec"
  find .venv -maxdepth 1 -name '.attnlens-setup-*' ! -name ".attnlens-setup-$inputs-*" -delete
  touch "$stamp"
fi
