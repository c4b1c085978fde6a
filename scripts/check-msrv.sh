#!/usr/bin/env bash
# The rust-version sluice states must cover what its dependencies need: no
# crate compiled for Linux may declare a newer one. (Only the machine's own
# toolchain can be had here, so this checks the stated minimum against the
# dependency graph; the code itself is built with the newer toolchain.)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo metadata --format-version 1 --locked --filter-platform x86_64-unknown-linux-gnu | python3 -c '
import json, sys
meta = json.load(sys.stdin)
def version(v):
    return (tuple(int(x) for x in v.split(".")) + (0, 0))[:3]
ours = next(p for p in meta["packages"] if p["name"] == "sluice")["rust_version"]
used = {node["id"] for node in meta["resolve"]["nodes"]}
newer = []
for p in meta["packages"]:
    need = p.get("rust_version")
    if p["id"] in used and need and version(need) > version(ours):
        newer.append("%s %s needs %s" % (p["name"], p["version"], need))
if newer:
    sys.exit("rust-version %s is below what these dependencies need:\n  %s" % (ours, "\n  ".join(newer)))
print("rust-version %s covers all %d crates in the Linux build" % (ours, len(used)))
'
