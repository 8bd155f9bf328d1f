#!/usr/bin/env bash
# Training-step time through burn-train's Learner (`collab bench train --learner`: the path of
# `collab train` and the tree) against the plain loop (`collab bench train`), on one random batch,
# in alternating rounds of one run (the VM is noisy: ratios of medians over rounds).
# Usage: bash scripts/learner_overhead.sh [STEPS] [ROUNDS]; prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/burn-collab/target}"
STEPS="${1:-10}"
ROUNDS="${2:-3}"
cargo build --release -q -p collab-cli
BIN="$CARGO_TARGET_DIR/release/collab"
times="$(mktemp)"
for _ in $(seq "$ROUNDS"); do
    for run in "ds-cnn-l 100" "mobilenet-v1-cifar 64"; do
        set -- $run
        for wrap in none pcqat; do
            for path in loop learner; do
                flag=()
                if [ "$path" = learner ]; then flag=(--learner); fi
                ms="$("$BIN" bench train --model "$1" --batch-size "$2" --wrap "$wrap" \
                    --steps "$STEPS" "${flag[@]}" --json 2>/dev/null | jq -r .median_ms)"
                echo "$1 $2 $wrap $path $ms" >> "$times"
            done
        done
    done
done
python3 - "$times" "$ROUNDS" "$STEPS" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    model, batch, wrap, path, ms = line.split()
    rows.setdefault((model, batch, wrap), {}).setdefault(path, []).append(float(ms))
print(f"Median over {sys.argv[2]} alternating rounds of each run's median step time ({sys.argv[3]} steps")
print("after 2 warm-up; through burn-train: the time between the Learner's requests for consecutive")
print("batches), ms.")
print()
print("| model | batch | wrap | plain loop | burn-train Learner | Learner / loop |")
print("|---|---|---|---|---|---|")
for (model, batch, wrap), t in rows.items():
    loop, learner = statistics.median(t["loop"]), statistics.median(t["learner"])
    print(f"| {model} | {batch} | {wrap} | {loop:.1f} | {learner:.1f} | {learner / loop:.2f} |")
PY
rm -f "$times"
