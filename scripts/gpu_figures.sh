#!/usr/bin/env bash
# The README "Performance" GPU figures, on a machine with a GPU (e.g. the `device` tool's H100), from the repo root:
#   1. time to precision@1 >= 0.99: experiment=mnist_multitask_fast on the GPU (train/wall_s = the training loop's
#      wall time, validation included, process start-up and test not), three seeds;
#   2. scripts/bench_eval.py with simlearn on the GPU against PML on that machine's CPU (faiss).
#
# Offline machines (the device tool): prepare here, then carry .whl and .mnist:
#   ../shared/tools/device-wheels .whl faiss-cpu
#   mkdir -p .mnist/MNIST/raw && for f in ../shared/data/MNIST/raw/*-ubyte; do gzip -c "$f" > .mnist/MNIST/raw/$(basename "$f").gz; done
#   device run, carry [".whl", ".mnist"]:  bash scripts/gpu_figures.sh   (or PART=train, then PART=eval)
# Extra arguments go to every training run; DEVICE=cpu SEEDS=42 EVAL_SIZES=10000 makes a quick dry run on a CPU.
set -euo pipefail
DEVICE=${DEVICE:-cuda}
SEEDS=${SEEDS:-"42 43 44"}
EVAL_SIZES=${EVAL_SIZES:-"10000 100000 1000000"}
PART=${PART:-all}  # train | eval | all: the device tool allows 600 s per command, so a slow machine can split them
out=${OUT:-outputs/gpu_figures}
mkdir -p "$out"

export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # simlearn from this checkout, installed or not
if [ -d .whl ] && ! python3 -c "import hydra, pytorch_metric_learning, faiss" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
data_root=${DATA_ROOT:-../shared/data}
if [ -d .mnist/MNIST/raw ]; then  # gzipped copies carried to the machine
  data_root=/tmp/mnist_data
  mkdir -p $data_root/MNIST/raw
  for f in .mnist/MNIST/raw/*.gz; do gunzip -c "$f" > "$data_root/MNIST/raw/$(basename "$f" .gz)"; done
fi
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
trainer=$([ "$DEVICE" = cuda ] && echo gpu || echo cpu)

for seed in $SEEDS; do
  [ "$PART" = eval ] && break
  log="$out/mnist_fast_seed$seed.log"
  python3 train.py experiment=mnist_multitask_fast trainer=$trainer data.root=$data_root seed=$seed logger=none \
    reports.plots=null hydra.run.dir="$out/mnist_fast_seed$seed" "$@" > "$log" 2>&1 || { tail -40 "$log"; exit 1; }
  python3 -c "import json, sys; m = json.load(open(sys.argv[1])); print(f\"seed {sys.argv[2]}: train/wall_s \
{m['train/wall_s']:.2f}  epochs {m['train/epochs']:.0f}  test/precision@1 {m['test/precision@1']:.4f}  \
test/map@r {m['test/map@r']:.4f}\")" "$out/mnist_fast_seed$seed/metrics.json" "$seed" | tee -a "$out/summary.txt"
done

[ "$PART" = train ] && exit 0
# on a GPU the 1M-item rows search all 1M queries (leave-one-out, 1e12 pairs) instead of a 10k-query sample
max_pairs=$([ "$DEVICE" = cuda ] && echo 1e12 || echo 1e10)
python3 scripts/bench_eval.py --device "$DEVICE" --backends torch --sizes $EVAL_SIZES --max-pairs "$max_pairs" --timeout 500 \
  | tee "$out/bench_eval.txt"
