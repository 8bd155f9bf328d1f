#!/usr/bin/env bash
# GPU timings on a lent device machine (the workplace's `device` tool, an NVIDIA H100/H200 with
# no Rust toolchain), from a release `collab` built here with `--features wgpu`.
#
# What travels (ignored folders named in the call's `carry`; see docs/GPU.md):
#   .devA/collab.xz          strip + xz of `cargo build --release -p collab-cli --features wgpu`
#   .devA/gl/*.deb           the Vulkan / GL loaders (the device image has the NVIDIA driver only)
#   .devA/ds_cnn_l.safetensors  the published weights
#   .devA/data/*.tar.xz, .devB/data/*.tar.xz  Speech Commands label folders, xz-compressed: the
#                            125 MB set does not fit one call's 64 MiB, so it travels in two
#                            calls to one warm machine and is staged in /tmp/cdev between them
#
#   bash scripts/device_run.sh stage   unpack what arrived into /tmp/cdev (every phase does this)
#   bash scripts/device_run.sh bench   wgpu and 16-core flex step times (DS-CNN-L, MobileNet)
#   bash scripts/device_run.sh tree    the DS-CNN-L recipe tree on wgpu, timed
#
# Logs and results go to $OUT (the device tool brings that folder back). STEPS, DSCNN and
# MOBILENET override the sizes for a smoke test on a CPU Vulkan driver (lavapipe).
set -uo pipefail
phase=${1:?usage: device_run.sh stage|bench|tree}
OUT=${OUT:-/tmp/device-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/$phase.log") 2>&1
STEPS=${STEPS:-20}
DSCNN=${DSCNN:-ds-cnn-l}
MOBILENET=${MOBILENET:-mobilenet-v1-cifar}
STAGE=${STAGE:-/tmp/cdev}
BIN=$STAGE/bin/collab

mkdir -p "$STAGE/bin" "$STAGE/gl" "$STAGE/done"
for f in .devA/gl/*.deb; do [ -f "$f" ] && cp "$f" "$STAGE/gl/"; done
[ -f .devA/ds_cnn_l.safetensors ] && cp .devA/ds_cnn_l.safetensors "$STAGE/"
if [ ! -x "$BIN" ] && [ -f .devA/collab.xz ]; then
    python3 -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
        .devA/collab.xz "$BIN" && chmod +x "$BIN"
fi
[ -x "$BIN" ] || { echo "no collab binary in $STAGE: carry .devA"; exit 2; }
if ! ldconfig -p | grep -q 'libvulkan.so.1 '; then
    for f in "$STAGE"/gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
nv=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$nv" ] && export VK_DRIVER_FILES=$nv
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv
nproc

# Unpack every Speech Commands part that has arrived into $STAGE/sc (kept between calls).
python3 - "$STAGE" <<'PY'
import glob, os, sys, tarfile
stage = sys.argv[1]
for f in sorted(glob.glob(".devA/data/*.tar.xz") + glob.glob(".devB/data/*.tar.xz")):
    done = os.path.join(stage, "done", os.path.basename(f))
    if os.path.exists(done):
        continue
    with tarfile.open(f) as t:
        t.extractall(os.path.join(stage, "sc"), filter="data")
    open(done, "w").close()
sc = os.path.join(stage, "sc")
print("speech commands folders:", sorted(os.listdir(sc)) if os.path.isdir(sc) else [])
PY

# One timed `collab bench train`, its JSON line labelled and kept in $OUT/bench.jsonl.
bench() {
    local label=$1
    shift
    local t0=$SECONDS
    local line
    line=$(timeout 150 "$BIN" "$@" --json | tail -1)
    echo "{\"label\":\"$label\",\"wall_s\":$((SECONDS - t0)),\"result\":${line:-null}}" | tee -a "$OUT/bench.jsonl"
}

case $phase in
stage) ;;
bench)
    # Which adapter wgpu picked (an NVIDIA GPU, not a CPU driver such as llvmpipe).
    RUST_LOG=wgpu_core=debug timeout 60 "$BIN" --device wgpu bench train --model ds-cnn-s --steps 1 --json 2>&1 |
        grep -o 'Adapter AdapterInfo { name: "[^"]*"[^}]*device_type: [A-Za-z]*' | head -3
    bench wgpu-dscnn-none --device wgpu bench train --model "$DSCNN" --steps "$STEPS"
    for wrap in prune cluster qat pcqat; do
        bench "wgpu-dscnn-$wrap" --device wgpu bench train --model "$DSCNN" --wrap $wrap --steps "$STEPS"
    done
    bench wgpu-dscnn-batchbn --device wgpu bench train --model "$DSCNN" --bn batch --steps "$STEPS"
    bench wgpu-mobilenet-batchbn --device wgpu bench train --model "$MOBILENET" --batch-size 64 --bn batch --steps "$STEPS"
    bench wgpu-mobilenet-none --device wgpu bench train --model "$MOBILENET" --batch-size 64 --steps "$STEPS"
    bench wgpu-mobilenet-qat --device wgpu bench train --model "$MOBILENET" --batch-size 64 --wrap qat --steps "$STEPS"
    bench flex-dscnn-none --device cpu bench train --model "$DSCNN" --steps 10
    bench flex-dscnn-pcqat --device cpu bench train --model "$DSCNN" --wrap pcqat --steps 10
    bench flex-dscnn-batchbn --device cpu bench train --model "$DSCNN" --bn batch --steps 10
    ;;
tree)
    [ "$(ls "$STAGE/sc" 2>/dev/null | wc -l)" -ge 12 ] || { echo "Speech Commands incomplete in $STAGE/sc: carry .devA and .devB"; exit 2; }
    sed 's#^weights = .*#weights = "'"$STAGE"'/ds_cnn_l.safetensors"#' configs/dscnn_l_recipe.toml > "$STAGE/recipe.toml"
    t0=$SECONDS
    timeout "${TREE_TIMEOUT:-420}" "$BIN" --device "${TREE_DEVICE:-wgpu}" tree --config "$STAGE/recipe.toml" --data "$STAGE/sc" --out "$STAGE/tree"
    echo "tree exit $? in $((SECONDS - t0)) s"
    cp "$STAGE"/tree/results.json "$STAGE"/tree/table.md "$OUT/" 2>/dev/null
    cat "$STAGE/tree/table.md" 2>/dev/null
    ;;
*)
    echo "unknown phase $phase"
    exit 2
    ;;
esac
