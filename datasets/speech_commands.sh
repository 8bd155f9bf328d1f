#!/usr/bin/env bash
# Download Speech Commands v0.02 (Warden 2018, CC BY 4.0) into datasets/speech_commands_v0.02.
set -euo pipefail
cd "$(dirname "$0")"
out=speech_commands_v0.02
mkdir -p "$out"
curl -L --fail -o "$out.tar.gz" http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz
sha256sum "$out.tar.gz"
tar -xzf "$out.tar.gz" -C "$out"
rm "$out.tar.gz"
echo "done: pass --data datasets/$out"
