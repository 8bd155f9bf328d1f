#!/usr/bin/env bash
# MLPerf Tiny's reference models (../shared/models/mlperf_tiny) through burn-collab: imported
# from float TFLite and ONNX, every scheme of the deployment tree, verified int8 files, and
# MLPerf's own int8 files scored on the same data. Writes results/mlperf_tiny.md.
#
#   scripts/mlperf_tiny.sh [OUT]        # OUT: where the runs go (default runs/mlperf_tiny)
#
# A tree reuses the nodes it finds finished in OUT with the same settings, so a rerun only
# rewrites the report. About 35 minutes on 2 cores from nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/mlperf_tiny}
SHARED=../shared
M=$SHARED/models/mlperf_tiny
TOOLS=$SHARED/tools
PY=${PYTHON:-python3}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/burn-collab/target}"
# PROFILE=dev reuses the test build (its dependencies are optimised too).
PROFILE=${PROFILE:-release}
cargo build --profile "$PROFILE" --workspace --bins
C="$CARGO_TARGET_DIR/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")/collab"
mkdir -p "$OUT" results
REPORT=results/mlperf_tiny.md

tree() { # name config data
    "$C" tree --config "configs/$2.toml" --data "$3" --out "$OUT/$1" >"$OUT/$1.log" 2>&1
}
tree resnet8 mlperf_resnet8 $SHARED/data/cifar10
tree resnet8_onnx mlperf_resnet8_onnx $SHARED/data/cifar10
tree kws mlperf_kws $SHARED/data/speech_commands_12

accuracy() { # eval args… → "76.45"
    "$C" eval "$@" --json 2>/dev/null | "$PY" -c 'import json,sys; print("%.2f" % (100 * json.load(sys.stdin)["accuracy"]))'
}
ref_resnet=$(accuracy --model $M/pretrainedResnet_quant.tflite --like "$OUT/resnet8/baseline" --data $SHARED/data/cifar10)
ref_kws=$(accuracy --model $M/kws_ref_model.tflite --like "$OUT/kws/baseline" --data $SHARED/data/speech_commands_12)

# Import + PTQ export of the models without shared data (calibrated on random inputs of their
# range: the check is the file), then LiteRT reference vs TFLite Micro and Vela.
checks=""
for f in vww_96_float.tflite vww_96.onnx ad01_fp32.tflite ad01.onnx kws_ref_model_float32.tflite kws_ds_cnn.onnx; do
    name=${f//./_}
    "$C" import "$M/$f" --out "$OUT/import/$name" --force >/dev/null 2>&1
    "$C" export --checkpoint "$OUT/import/$name" --out "$OUT/import/$name.tflite" --force 2>/dev/null | tail -n 1 >"$OUT/import/$name.export"
    # Loads and runs in both (their FULLY_CONNECTED rounding differs by design, so they are not
    # compared with each other here; ours against each, bit for bit, is the test
    # `mlperf_tiny_models_import_and_export_bit_exact`).
    runtimes=$("$PY" $TOOLS/tflite_check.py "$OUT/import/$name.tflite" --interpreters litert_ref,tflm --no-cross 2>/dev/null | tail -n 1 || true)
    vela=$("$PY" $TOOLS/vela_check.py "$OUT/import/$name.tflite" 2>/dev/null | grep -E "^NPU operators" || echo "vela: failed")
    checks+="| \`$f\` | $(cut -d: -f2- "$OUT/import/$name.export" | cut -d';' -f1) | $runtimes | $vela |"$'\n'
done

{
    echo "# MLPerf Tiny reference models through burn-collab"
    echo
    echo "Made by \`scripts/mlperf_tiny.sh $OUT\` on $(date -u +%F), $(nproc) cores, $(uname -m)."
    echo "Accuracies on the shared data (\`../shared/data\`): CIFAR-10's 2,000 test images, Speech"
    echo "Commands' 544 validation clips. Fine-tuning: 2 epochs per stage on the shared training split."
    echo
    echo "## ResNet-8 (CIFAR-10), imported from float TFLite"
    echo
    cat "$OUT/resnet8/table.md"
    echo
    echo "MLPerf's own int8 file (\`pretrainedResnet_quant.tflite\`), our interpreter, same images: **$ref_resnet%**."
    echo
    echo "## ResNet-8, imported from ONNX"
    echo
    cat "$OUT/resnet8_onnx/table.md"
    echo
    echo "## DS-CNN keyword spotting (MLPerf's), tf.signal MFCCs, MLPerf's label order"
    echo
    cat "$OUT/kws/table.md"
    echo
    echo "MLPerf's own int8 file (\`kws_ref_model.tflite\`), our interpreter, same clips: **$ref_kws%**."
    echo
    echo "## Imported and exported (PTQ), files checked"
    echo
    echo "| source | int8 file | LiteRT reference and TFLite Micro load and run it | Vela (Ethos-U55-128) |"
    echo "|---|---|---|---|"
    printf "%s" "$checks"
} >"$REPORT"
echo "wrote $REPORT"
