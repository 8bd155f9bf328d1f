#!/usr/bin/env bash
# Side by side: one training step (forward + backward + Adam) of DS-CNN-L (batch 100) and
# MobileNet v1 CIFAR (batch 64) in TensorFlow-Keras (benches/tf_keras_step.py, from a Python
# venv) and in burn-collab (`collab bench train`), on the same machine, in alternating rounds
# (this kind of VM drifts by ±10% between runs). Prints a Markdown table: medians over the
# rounds of each round's median step, and ours / TensorFlow.
#
#   bash benches/vs_tensorflow.sh [--install] [STEPS] [ROUNDS]
#
# --install creates the venv and installs tensorflow-cpu (about 600 MB). The venv is
# $COLLAB_TF_VENV, default ~/.cache/burn-collab/tf-venv; without TensorFlow there, only our
# rows are printed. TensorFlow's BatchNorm trains on batch statistics, so the like-for-like row
# is ours with `--bn batch`; `--bn folded` (how our compression stages train) is shown too.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/burn-collab/target}"
VENV="${COLLAB_TF_VENV:-$HOME/.cache/burn-collab/tf-venv}"
if [ "${1:-}" = "--install" ]; then
    shift
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "tensorflow-cpu==2.21.0"
fi
STEPS="${1:-10}"
ROUNDS="${2:-3}"
cargo build --release -q -p collab-cli
BIN="$CARGO_TARGET_DIR/release/collab"
HAVE_TF=0
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import tensorflow" 2>/dev/null; then
    HAVE_TF=1
fi
OUT="$(mktemp)"
trap 'rm -f "$OUT"' EXIT
for spec in "ds-cnn-l 100" "mobilenet-v1-cifar 64"; do
    set -- $spec
    model=$1
    batch=$2
    for round in $(seq "$ROUNDS"); do
        if [ "$HAVE_TF" = 1 ]; then
            echo "$model tf $("$VENV/bin/python" benches/tf_keras_step.py --model "$model" \
                --batch-size "$batch" --steps "$STEPS" --json 2>/dev/null | tail -1)" >>"$OUT"
        fi
        for bn in batch folded; do
            echo "$model $bn $("$BIN" bench train --model "$model" --batch-size "$batch" \
                --steps "$STEPS" --bn "$bn" --json 2>/dev/null | tail -1)" >>"$OUT"
        done
    done
done
python3 - "$OUT" "$STEPS" "$ROUNDS" <<'EOF'
import json, statistics, sys
rows, tf_version = {}, None
for line in open(sys.argv[1]):
    model, kind, js = line.split(" ", 2)
    v = json.loads(js)
    rows.setdefault((model, kind), []).append(v["median_ms"])
    if kind == "tf":
        tf_version = v["backend"]
print(f"Median ms per step over {sys.argv[3]} alternating rounds (each the median of "
      f"{sys.argv[2]} steps after 2 warm-up); TensorFlow: {tf_version or 'not installed'}.")
print()
print("| model | batch | TensorFlow-Keras (batch-statistics BN) | ours, BN batch | ours / TF | ours, BN folded | ours / TF |")
print("|---|---|---|---|---|---|---|")
for model, batch in [("ds-cnn-l", 100), ("mobilenet-v1-cifar", 64)]:
    med = {k: statistics.median(rows[(model, k)]) for k in ("tf", "batch", "folded") if (model, k) in rows}
    tf = med.get("tf")
    ratio = lambda k: f"{med[k] / tf:.2f}" if tf else "-"
    tf_cell = f"{tf:.1f}" if tf else "-"
    print(f"| {model} | {batch} | {tf_cell} | {med['batch']:.1f} | {ratio('batch')} | {med['folded']:.1f} | {ratio('folded')} |")
EOF
