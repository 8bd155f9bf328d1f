#!/usr/bin/env bash
# Download CIFAR-10 (Krizhevsky 2009), binary version, into datasets/cifar-10-batches-bin.
set -euo pipefail
cd "$(dirname "$0")"
curl -L --fail -o cifar-10-binary.tar.gz https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz
sha256sum cifar-10-binary.tar.gz
tar -xzf cifar-10-binary.tar.gz
rm cifar-10-binary.tar.gz
echo "done: pass --data datasets/cifar-10-batches-bin"
