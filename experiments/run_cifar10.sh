#!/usr/bin/env bash
# One CIFAR-10 experiment of RESULTS.md: train without labels, then weighted kNN (k=200) and the linear probe on
# the test images, each beside the randomly initialised encoder exported at step 0. kNN and the probe use all
# 50 000 training images (PROBE_MAX_TRAIN=N: N evenly spread, as the rows before the fast probe did); the probe
# sees the export's percentile-scaled features unstandardised, C on the paper's grid (extended at an edge).
# EVAL_ONLY=1 skips training and evaluates the run's newest exports.
#   bash experiments/run_cifar10.sh cifar10_exemplar_softmax   (or cifar10_exemplar_nce, cifar10_npid)
# KNN_MAX_TRAIN=N uses N evenly spread training images as the kNN memory instead of all 50 000 (RESULTS.md says
# where; set for ResNet-18, whose 2 x 55 000 forward passes alone take longer than training on a 2-core CPU).
# KNN_OUTPUTS="embedding representation" also classifies the representation below the head (knn_representation_*.json;
# for runs with an MLP head, --head_hidden_dim).
# Needs the JPEG class folders at $CIFAR10_DIR (default /tmp/cifar10): python experiments/cifar10_folders.py
# --out=/tmp/cifar10 --test_per_class=500 writes them from tensorflow-datasets.
set -euo pipefail
name=$1
data=${CIFAR10_DIR:-/tmp/cifar10}
out=experiments/results/$name
mkdir -p "$out"
[ -d "$data/train" ] || { echo "no CIFAR-10 folders at $data (set CIFAR10_DIR, or write them: python experiments/cifar10_folders.py --out=$data --test_per_class=500)" >&2; exit 2; }

if [ -z "${EVAL_ONLY:-}" ]; then
start=$(date +%s)
python -m exemplar_tf.train --flagfile="experiments/$name.cfg" --source="folder:$data" \
  --knn_source="folder:$data" --run_dir="runs/$name" --noprogress 2>&1 | tee "$out/train.log"
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
echo "{\"train_seconds\": $(( $(date +%s) - start )), \"cpu\": \"$cpu\", \"cores\": $(nproc)}" > "$out/time.json"
# Keep what the plot and table need beside the results (runs/ is not committed): the resolved flags and the
# kNN monitor and throughput read from TensorBoard.
cp "runs/$name/flags.cfg" "$out/flags.cfg"
python experiments/summarize.py --save_curves "$name"
fi

export_dir=$(ls -d savedmodels/$name/* | sort -t/ -k3 -n | tail -1)
random_dir=$(ls -d savedmodels/${name}_random/* | sort -t/ -k3 -n | tail -1)
for output in ${KNN_OUTPUTS:-embedding}; do
  prefix=$([ "$output" = embedding ] && echo knn || echo "knn_$output")
  for model in "$export_dir" "$random_dir"; do
    tag=$([ "$model" = "$random_dir" ] && echo random || echo trained)
    python -m exemplar_tf.knn --savedmodel="$model" --train="folder:$data" --test="folder:$data" \
        --max_train="${KNN_MAX_TRAIN:-0}" --output="$output" \
        2> "$out/${prefix}_$tag.log" > "$out/${prefix}_$tag.json"
  done
done
python -m exemplar_tf.evaluate --savedmodel="$export_dir" --baseline_savedmodel="$random_dir" \
  --dataset="folder:$data" --protocol=cifar10 --eval_size=32 --max_train="${PROBE_MAX_TRAIN:-0}" \
  --out_json="$out/probe.json" | tee "$out/probe.txt"
