"""Compile the Triton scan kernels for a GPU architecture without a GPU; report registers and spills.

Runs Triton's compiler and its bundled ptxas (``ptxas -v``) on the PTX of every kernel variant that
``mambamil.ops.triton_scan`` launches (all options on: D, z, delta_bias, softplus), so tile sizes can be
checked for register spills on a CPU-only machine. No timing: speed needs the GPU (benchmarks/scan.py).

usage: python benchmarks/triton_compile.py [--arch 90] [--dtype bf16]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time


def ptxas_info(ptx: str, arch: int) -> str:
    """Registers / spill line of ``ptxas -v`` for one PTX module."""
    import triton

    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    sm = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        res = subprocess.run([ptxas, "--gpu-name", sm, "-v", path, "-o", os.devnull], capture_output=True, text=True)
    lines = [ln.split(":", 1)[-1].strip() for ln in res.stderr.splitlines() if "registers" in ln or "spill" in ln]
    return "; ".join(lines) or res.stderr.strip()[-200:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", type=int, default=90, help="compute capability x10 (default: %(default)s, H100/H200)")
    ap.add_argument("--dtype", default="bf16", help="dtype of u, delta, B, C, z (fp32, fp16, bf16)")
    args = ap.parse_args()
    from mambamil.ops import triton_scan as ts

    print(
        f"# Triton scan kernels for sm_{args.arch}, {args.dtype} inputs; tiles: forward BLOCK_D={ts.FWD_BLOCK_D} "
        f"({ts.FWD_WARPS} warps), backward BLOCK_D={ts.BWD_BLOCK_D} ({ts.BWD_WARPS} warps), BLOCK_L={ts.BLOCK_L}"
    )
    t0 = time.perf_counter()
    kernels = ts.compile_kernels(args.arch, args.dtype)
    print(f"# compiled {len(kernels)} kernels in {time.perf_counter() - t0:.1f} s")
    print("| kernel | cubin KB | ptxas -v |")
    print("|---|---|---|")
    for name, k in kernels.items():
        print(f"| {name} | {len(k.asm['cubin']) / 1024:.0f} | {ptxas_info(k.asm['ptx'], args.arch)} |")


if __name__ == "__main__":
    main()
