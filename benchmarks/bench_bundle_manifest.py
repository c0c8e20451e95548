#!/usr/bin/env python3
"""bundle_manifest's hashing against the usual tools, measured in one run.

1. One large file: our sha256 routine vs `openssl dgst -sha256` (the per-core
   limit) vs coreutils `sha256sum`. Target: >= 0.9x openssl.
2. Several files: bundle_manifest with both cores vs openssl over the same files
   in one process. Target: >= 1.7x openssl.
3. A model store: sealing it vs the naive `tar -czf` of it.
4. A re-run with nothing changed. Target: under a second for any size.

Files are written first and read from the page cache, so this measures hashing,
not the disk. Sizes are modest for a 2-core CI machine; pass --large-mib to grow.

    .venv/bin/python benchmarks/bench_bundle_manifest.py [--large-mib 1024] [--files 4]
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# tests.conftest puts the collection (plugins/) where Ansible would.
importlib.import_module("tests.conftest")
bundle_manifest = importlib.import_module("bundle_manifest")
sha256_file = importlib.import_module(
    "ansible_collections.gemma_airgap.ollama.plugins.module_utils.gemma_airgap_files").sha256_file


def timed(function, repeat: int = 3) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def run(*command: str) -> None:
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def write_random(path: Path, mib: int) -> None:
    block = os.urandom(1 << 20)
    with open(path, "wb") as out:
        for index in range(mib):
            out.write(block[index % 7:] + block[: index % 7])


def row(name: str, seconds: float, size: int, base: float | None = None) -> None:
    rate = size / seconds / 1e9
    ratio = f"{base / seconds:6.2f}x" if base else "  base"
    print(f"  {name:<38} {seconds:8.3f} s {rate:7.2f} GB/s  {ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large-mib", type=int, default=1024)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--store", type=Path, default=Path(
        "/var/lib/gemma-airgap/bundles/lab-1/models"),
        help="a model store to compare with tar -czf (default: the lab bundle's)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-manifest-"))
    try:
        large = work / "one" / "large.bin"
        large.parent.mkdir()
        write_random(large, args.large_mib)
        size = large.stat().st_size
        print(f"1. One file of {size / 2**20:.0f} MiB (page cache), median of 3")
        base = timed(lambda: run("openssl", "dgst", "-sha256", str(large)))
        row("openssl dgst -sha256", base, size)
        row("sha256sum", timed(lambda: run("sha256sum", str(large))), size, base)
        row("bundle_manifest (sha256_file)", timed(lambda: sha256_file(str(large))), size, base)

        several = work / "several"
        several.mkdir()
        per_file = max(1, args.large_mib // args.files)
        for index in range(args.files):
            write_random(several / f"part{index}.bin", per_file)
        paths = sorted(str(p) for p in several.iterdir())
        total = sum(os.path.getsize(p) for p in paths)
        print(f"2. {args.files} files of {per_file} MiB, {os.cpu_count()} cores")
        base = timed(lambda: run("openssl", "dgst", "-sha256", *paths))
        row("openssl dgst -sha256 (one process)", base, total)
        relative = [os.path.basename(p) for p in paths]
        row("bundle_manifest (all cores)",
            timed(lambda: bundle_manifest.hash_all(str(several), relative, 0)), total, base)

        if args.store.is_dir():
            store_size = sum(p.stat().st_size for p in args.store.rglob("*") if p.is_file())
            copy = work / "store"
            shutil.copytree(args.store, copy)
            print(f"3. The model store {args.store} ({store_size / 2**20:.0f} MiB)")
            base = timed(lambda: run("tar", "-C", str(copy), "-czf", str(work / "s.tgz"), "."),
                         repeat=1)
            row("tar -czf (the usual way)", base, store_size)
            for cache in copy.glob(".hashcache.json"):
                cache.unlink()
            seal_once = timed(lambda: bundle_manifest.seal(str(copy), "bench", {}, 0, False,
                                                           False), repeat=1)
            row("bundle_manifest seal (first run)", seal_once, store_size, base)
            bundle_manifest.seal(str(copy), "bench", {}, 0, True, False)
            again = timed(lambda: bundle_manifest.seal(str(copy), "bench", {}, 0, True, False))
            print(f"4. Re-run with nothing changed: {again * 1000:.1f} ms "
                  f"({store_size / 2**20:.0f} MiB, target < 1 s)")
        else:
            print(f"3./4. skipped: no model store at {args.store} (run `make lab` first)")
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
