#!/usr/bin/env bash
# The main job: a CPU sweep of small models on photographs animated by a moving camera,
# the fit, a check of the law on a held-out larger model, the report and the plan.
#   bash examples/run_sweep.sh [--quick] [--config FILE] [--out DIR]
# --config: the sweep file (default configs/sweep.yaml: sizes, token budgets, grid).
# --quick:  the sweep file's toy-scale `quick:` section (minutes; the tests run it).
# Resumable and SIGKILL-safe: rerun the same command to continue.
# Outputs in DIR (default runs/sweep, runs/sweep_quick with --quick): law.json,
# report.md, plots/*.png, validation.json, plan.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CONFIG=configs/sweep.yaml
ARGS=()
die() { echo "run_sweep.sh: error: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) ARGS+=(--quick); shift ;;
    --config) [ $# -ge 2 ] || die "--config needs a sweep file"; CONFIG=$2; shift 2 ;;
    --out) [ $# -ge 2 ] || die "--out needs a directory"; ARGS+=(--out "$2"); shift 2 ;;
    -h|--help) sed -n 2,9p "$0"; exit 0 ;;
    *) die "unknown argument $1 (expected --quick, --config FILE, --out DIR)" ;;
  esac
done
exec "$PY" tools/run_sweep.py --sweep "$CONFIG" "${ARGS[@]}"
