#!/usr/bin/env bash
# Reproduce the MNIST experiments (README, "MNIST"): train each at its default epochs into OUT/<experiment>/,
# record its wall time and hardware, then print the markdown table of test recall@1, MAP@R and structure.json.
#
#   scripts/reproduce_mnist.sh [hydra overrides for every run, e.g. data.root=../shared/data trainer=cpu]
#
# Environment: OUT (default outputs/mnist_reproduce), EXPERIMENTS (default: all five, space-separated).
# A run dir that already holds metrics.json is kept, not trained again; delete it to rerun that experiment.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-outputs/mnist_reproduce}
EXPERIMENTS=${EXPERIMENTS:-mnist_multitask mnist_softmax mnist_triplet mnist_contrastive mnist_autoencoder}
mkdir -p "$OUT"
TIMEFORMAT="%R %U %S"

for name in $EXPERIMENTS; do
  dir="$OUT/$name"
  if [[ -f "$dir/metrics.json" ]]; then
    echo "== $name: $dir/metrics.json exists, kept (delete $dir to train it again)"
    continue
  fi
  if [[ -d "$dir" ]]; then
    echo "== $name: $dir holds an unfinished run; delete it and rerun" >&2
    exit 1
  fi
  echo "== $name → $dir (log: $dir.log)"
  # wall, user and system seconds of the whole run (data loading, training, test, files)
  if ! { time python train.py "experiment=$name" "hydra.run.dir=$dir" logger=csv "$@" >"$dir.log" 2>&1; } \
    2>"$dir.time"; then
    echo "== $name failed; last lines of $dir.log:" >&2
    tail -n 20 "$dir.log" >&2
    exit 1
  fi
  read -r wall user sys <"$dir.time"
  python scripts/mnist_table.py --record "$dir" "$wall" "$(python -c "print($user + $sys)")"
done

# shellcheck disable=SC2086
python scripts/mnist_table.py "$OUT" $EXPERIMENTS
