#!/usr/bin/env python3
"""One input for the `checkpoint` fuzz target from a checkpoint folder.

Usage: pack.py CHECKPOINT_DIR FLAGS OUT
FLAGS bit 0: include optimizer.bpk; bit 1: the harness writes the true checksums into the
manifest (the packed manifest is marked format 2). Layout: flags byte, manifest length and
record length (u32 little endian), manifest, record, optimizer state.
"""
import json
import os
import struct
import sys

src, flags, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
manifest = json.load(open(os.path.join(src, "manifest.json")))
if flags & 2:
    manifest["format"] = 2  # the harness writes the true checksums
manifest = json.dumps(manifest).encode()
record = open(os.path.join(src, "model.bpk"), "rb").read()
optimizer = open(os.path.join(src, "optimizer.bpk"), "rb").read() if flags & 1 else b""
open(out, "wb").write(bytes([flags]) + struct.pack("<II", len(manifest), len(record)) + manifest + record + optimizer)
