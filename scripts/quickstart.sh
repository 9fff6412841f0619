#!/usr/bin/env bash
# Set up attnlens and explain the bundled sample images with the embedded default model.
# Writes one heat-map overlay PNG per image and explanations.json (top-5 predictions, method)
# into attnlens-out/ (or the folder given as first argument).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
out="${1:-attnlens-out}"
"$root/.venv/bin/attnlens" explain --threads 2 --out "$out"
