#!/usr/bin/env python3
"""BENCHMARKS.md's GPU section from a device run's bench.jsonl (scripts/device_run.sh bench).

Usage: python3 scripts/gpu_table.py docs/results/gpu_h200/bench.jsonl
The numbers are recorded, not rerun: a GPU is lent to some sessions only.
"""
import json
import sys

path = sys.argv[1]
rows = {}
for line in open(path, encoding="utf-8"):
    line = line.strip()
    if line:
        entry = json.loads(line)
        if entry.get("result"):
            rows[entry["label"]] = entry["result"]


def ms(label):
    return rows[label]["median_ms"] if label in rows else None


print("| backend | model | batch | wrap | BatchNorm | median ms (min) | ratio to plain |")
print("|---|---|---|---|---|---|---|")
table = [
    ("wgpu", "dscnn", "ds-cnn-l", 100, "none", "batch", None),
    ("wgpu", "dscnn", "ds-cnn-l", 100, "none", "folded", None),
    ("wgpu", "dscnn", "ds-cnn-l", 100, "prune", "folded", "none"),
    ("wgpu", "dscnn", "ds-cnn-l", 100, "cluster", "folded", "none"),
    ("wgpu", "dscnn", "ds-cnn-l", 100, "qat", "folded", "none"),
    ("wgpu", "dscnn", "ds-cnn-l", 100, "pcqat", "folded", "none"),
    ("wgpu", "mobilenet", "mobilenet-v1-cifar (width 1)", 64, "none", "batch", None),
    ("wgpu", "mobilenet", "mobilenet-v1-cifar (width 1)", 64, "none", "folded", None),
    ("wgpu", "mobilenet", "mobilenet-v1-cifar (width 1)", 64, "qat", "folded", "none"),
    ("flex", "dscnn", "ds-cnn-l", 100, "none", "batch", None),
    ("flex", "dscnn", "ds-cnn-l", 100, "none", "folded", None),
    ("flex", "dscnn", "ds-cnn-l", 100, "pcqat", "folded", "none"),
]
for backend, short, model, batch, wrap, bn, base in table:
    label = f"{backend}-{short}-" + ("batchbn" if bn == "batch" else wrap)
    if label not in rows:
        continue
    r = rows[label]
    ratio = "-"
    if base is not None and ms(f"{backend}-{short}-{base}"):
        ratio = f"{r['median_ms'] / ms(f'{backend}-{short}-{base}'):.2f}"
    where = "wgpu (Vulkan), H200" if backend == "wgpu" else "flex, the device's 16 CPU cores"
    print(f"| {where} | {model} | {batch} | {wrap} | {bn} | {r['median_ms']:.1f} ({r['min_ms']:.1f}) | {ratio} |")
