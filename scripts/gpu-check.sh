#!/usr/bin/env bash
# The GPU checks of hpo in one command, for a lent machine with an NVIDIA GPU whose python3
# already has torch (and numpy, scikit-learn, pandas, ...) but not the rest of hpo's packages,
# and no network:
#
#   bash scripts/gpu-check.sh --fetch-wheels   # here, with pip's registry: fills .whl/ (git-ignored)
#   bash scripts/gpu-check.sh OUT_DIR [STEP...] # there, from the repository root, .whl/ carried
#
# It installs the wheels into /tmp/site (nothing else on that machine changes), then writes to
# OUT_DIR: the GPU (gpu.txt); the CUDA tests (tests.txt: tests/engine/test_gpu.py, and the nets' and
# stacked folds' tests, which use the GPU where there is one); trial speed of the MNIST-shaped
# MLP and CNN on the CPU and the GPU, with two workers sharing the GPU (speed.md,
# speed.json); and the same on the GPU with mixed_precision (speed-mixed.md, speed-mixed.json).
# STEPs (default: all three, in this order) pick what runs: tests, speed, mixed; the speed
# step's CPU half is most of the time (the CUDA half and the other steps take a minute or two
# each), so split them over two calls where one call's time is capped. DEVICES=cpu runs it
# all without a GPU, to try the script itself (about 13 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."

# hpo's packages that the lent machine's image lacks (the image's list is in the device tool's
# KINDS.md), at the versions this project's .venv tests with.
WHEELS=(
  optuna==5.0.0 optuna-dashboard==0.21.0 bottle==0.13.4 plotly==7.1.0 skorch==1.4.0
  SQLAlchemy==2.1.9 alembic==1.20.1 Mako==1.4.3 colorlog==6.12.0 pydantic==2.14.4
  pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 psycopg==3.3.9
  psycopg-binary==3.3.9
)
PYTHON_VERSION=${PYTHON_VERSION:-3.12}  # the lent machine's python3

if [[ ${1:-} == --fetch-wheels ]]; then
  platforms=()
  for tag in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1; do
    platforms+=(--platform "${tag}_x86_64")
  done
  python3 -m pip download --quiet --no-deps --only-binary=:all: --implementation cp \
    --python-version "$PYTHON_VERSION" "${platforms[@]}" -d .whl "${WHEELS[@]}"
  ls .whl
  exit 0
fi

out=${1:?usage: bash scripts/gpu-check.sh OUT_DIR [tests] [speed] [mixed] (or --fetch-wheels)}
shift
steps=" ${*:-tests speed mixed} "
mkdir -p "$out"
devices=${DEVICES:-cpu,cuda}
if ! python3 -c "import optuna, skorch, optuna_dashboard, plotly" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

{ nvidia-smi -L || echo "no nvidia-smi"; python3 -c "import torch; print('torch', torch.__version__,
'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"; } >"$out/gpu.txt" 2>&1

if [[ $steps == *" tests "* ]]; then
  python3 -m pytest -q -p no:cacheprovider tests/engine/test_gpu.py tests/engine/test_nets.py \
    tests/engine/test_stacked_folds.py >"$out/tests.txt" 2>&1 || echo "tests failed: see tests.txt"
  tail -n 3 "$out/tests.txt"
fi

# 4 trials, so that each of the 2 workers sharing the GPU has one after its first (whose
# lazy imports and CUDA start-up the steady-state columns leave out)
speed=(python3 benchmarks/trial_speed.py --cases mnist-mlp,mnist-cnn --repeats 1 --trials 4
  --workers 2)
if [[ $steps == *" speed "* ]]; then
  "${speed[@]}" --device "$devices" --json "$out/speed.json" >"$out/speed.md" 2>&1 \
    || echo "trial speed failed: see speed.md"
  grep "^| mnist" "$out/speed.md" || true
fi
if [[ $steps == *" mixed "* ]]; then
  "${speed[@]}" --device "${devices##*,}" --mixed-precision --json "$out/speed-mixed.json" \
    >"$out/speed-mixed.md" 2>&1 || echo "trial speed, mixed precision, failed: see speed-mixed.md"
  grep "^| mnist" "$out/speed-mixed.md" || true
fi
