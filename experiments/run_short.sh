#!/usr/bin/env bash
# A short-schedule CIFAR-10 run for comparing levers without the test folder: train (experiments/<name>.cfg), then
# kNN on held-out training images (experiments/heldout_knn.py) for the trained and the random export.
#   bash experiments/run_short.sh cifar10_short_exemplar_nce_r18w32
# Needs the JPEG class folders at $CIFAR10_DIR (default /tmp/cifar10): python experiments/cifar10_folders.py
# --out=/tmp/cifar10 --test_per_class=500 writes them from tensorflow-datasets.
set -euo pipefail
name=$1
data=${CIFAR10_DIR:-/tmp/cifar10}
out=experiments/results/$name
mkdir -p "$out"
[ -d "$data/train" ] || { echo "no CIFAR-10 folders at $data (set CIFAR10_DIR, or write them: python experiments/cifar10_folders.py --out=$data --test_per_class=500)" >&2; exit 2; }
start=$(date +%s)
python -m exemplar_tf.train --flagfile="experiments/$name.cfg" --source="folder:$data" --run_dir="runs/$name" \
  --noprogress 2>&1 | tee "$out/train.log"
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
echo "{\"train_seconds\": $(( $(date +%s) - start )), \"cpu\": \"$cpu\", \"cores\": $(nproc)}" > "$out/time.json"
cp "runs/$name/flags.cfg" "$out/flags.cfg"
for tag in trained random; do
  model=$([ $tag = trained ] && echo "savedmodels/$name" || echo "savedmodels/${name}_random")
  python experiments/heldout_knn.py --savedmodel="$(ls -d "$model"/* | sort -t/ -k3 -n | tail -1)" \
    --data="folder:$data" 2>/dev/null > "$out/heldout_knn_$tag.json"
done
cat "$out"/heldout_knn_*.json
