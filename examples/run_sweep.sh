#!/usr/bin/env bash
# A CPU-sized scaling sweep on the embedded default data, then the fit and the plan.
# 3 model sizes x 2 token budgets x 3 LRs x 3 batch sizes = 54 runs (~30 min on 2 idle
# cores). The grid is centred on the best cells of a measured 27-run sweep (LR 1.5e-3,
# 8 samples); see docs/scaling_laws.md for what such a CPU sweep can and cannot show.
# Resumable: rerun to continue after an interruption.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/sweep}
$PY tools/run_sweep.py --out "$OUT" \
  --presets cpu-0.13m cpu-0.6m cpu-1.6m \
  --train-tokens 196608 393216 \
  --lrs 5e-4 1.5e-3 4.5e-3 \
  --batch-sizes 4 8 16
$PY -m scaling_laws fit "$OUT" --out "$OUT/law.json" --plots "$OUT/plots"
$PY -m scaling_laws report "$OUT/law.json"
$PY tools/predict_config.py --budget 1e22 --law "$OUT/law.json"
