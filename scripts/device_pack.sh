#!/usr/bin/env bash
# Packs what scripts/device_run.sh needs on a lent GPU machine into .devA/ and .devB/ (both
# ignored through .git/info/exclude), each under the device tool's 64 MiB per call:
#   .devA: the stripped, xz-compressed `collab` built with `--features wgpu`, the Vulkan / GL
#          loader packages, the published DS-CNN-L weights, the first Speech Commands labels;
#   .devB: the other labels.
# Then, with the device tool: run `bash scripts/device_run.sh bench` (or `stage`) carrying
# .devA, and at once `bash scripts/device_run.sh tree` carrying .devB (see docs/GPU.md).
# Usage: bash scripts/device_pack.sh   (COLLAB_SHARED: the shared folder, default ../shared)
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="${COLLAB_SHARED:-../shared}"
export CARGO_TARGET_DIR="${WGPU_TARGET_DIR:-$HOME/.cache/burn-collab/wgpu-check}"
cargo build --release -q -p collab-cli --features wgpu
mkdir -p .git/info
grep -qx '/.devA/' .git/info/exclude 2>/dev/null || printf '/.devA/\n/.devB/\n' >> .git/info/exclude
rm -rf .devA .devB
mkdir -p .devA/data .devA/gl .devB/data
strip -o .devA/collab "$CARGO_TARGET_DIR/release/collab"
xz -T0 -6 .devA/collab
cp "$SHARED/pretrained/ml-kws-for-mcu/ds_cnn_l.safetensors" .devA/
apt_opts=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
mkdir -p /tmp/amd64/partial
apt-get "${apt_opts[@]}" update -qq
(cd .devA/gl && apt-get "${apt_opts[@]}" download -qq libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
sc="$SHARED/data/speech_commands_12"
labels=()
for d in "$sc"/*/; do labels+=("$(basename "$d")"); done
half=$(((${#labels[@]} + 1) / 2 + 1))
for i in "${!labels[@]}"; do
    part=.devA
    [ "$i" -ge "$half" ] && part=.devB
    tar -C "$sc" -cf - "${labels[$i]}" | xz -T0 -6 > "$part/data/${labels[$i]}.tar.xz"
done
tar -C "$sc" -cJf .devB/data/docs.tar.xz README.md LICENSE
du -sh .devA .devB
