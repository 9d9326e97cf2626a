"""Compile the Triton scan kernels for a GPU architecture without a GPU; report what the compiled code costs.

Compiles every kernel variant that ``mambamil.ops.triton_scan`` launches (all options on: D, z, delta_bias,
softplus) with the specialisation Triton's JIT gives it at run time (pointers 16-byte aligned, integer arguments
divisible by 16 where they are, for b=1, d=1024, n=16, L=409600), then reads Triton's bundled ptxas (``-v``) and
cuobjdump (SASS): registers, spills, shared memory, SASS instructions, SHFL and MUFU instructions. The baseline (the
kernels of issue 10, loaded from git revision ``--baseline``) is compiled the same way in the same run. No timing:
speed needs the GPU (benchmarks/scan.py).

SHFL / MUFU per (d, n, t): static count in the kernel's SASS times the threads of a program (every thread runs
it once), divided by the (channel, state, step) elements one program (for the looping kernels: one loop
iteration) covers, i.e. thread-instructions per element; a pass's total is the sum over its kernels (prologue and
epilogue instructions are counted as if in the loop: an upper bound). MUFU counts exp (EX2), log and the
reciprocals of divisions and sigmoids.

The 2D scan's forward kernel (mambamil.ops.triton_scan2d) gets its own table (fp32 inputs: the 2D scan's Triton
path computes its per-cell inputs in float32).

usage: python benchmarks/triton_compile.py [--arch 90] [--dtype bf16] [--baseline dad97fa]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: the shape the table is about (MambaMIL's d_inner=1024, d_state=16, a 400k-patch slide)
SHAPE = {"b": 1, "d": 1024, "n": 16, "L": 409_600}


def _tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def _compile(*args):
    from mambamil.ops.triton_scan import compile_variant

    return compile_variant(*args)


def stats(kernel, arch: int) -> dict:
    """Registers, spill bytes, shared memory (ptxas -v) and SASS instruction counts of one compiled kernel."""
    sm = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as tmp:
        ptx, cubin = os.path.join(tmp, "k.ptx"), os.path.join(tmp, "k.cubin")
        Path(ptx).write_text(kernel.asm["ptx"])
        Path(cubin).write_bytes(kernel.asm["cubin"])
        v = subprocess.run([_tool("ptxas"), "--gpu-name", sm, "-v", ptx, "-o", os.devnull], capture_output=True,
                           text=True, check=True).stderr  # fmt: skip
        sass = subprocess.run([_tool("cuobjdump"), "-sass", cubin], capture_output=True, text=True, check=True).stdout
    instr = [ln for ln in sass.splitlines() if re.match(r"\s+/\*[0-9a-f]{4}\*/\s", ln)]
    ops = [re.sub(r"^\s*/\*[0-9a-f]+\*/\s+(@!?U?P\w+\s+)?", "", ln).split()[0] for ln in instr]
    num = lambda pat: int(m.group(1)) if (m := re.search(pat, v)) else 0  # noqa: E731
    return {
        "regs": num(r"Used (\d+) registers"),
        "spill": num(r"(\d+) bytes spill stores") + num(r"(\d+) bytes spill loads"),
        "smem": kernel.metadata.shared,
        "sass": sum(op != "NOP" for op in ops),
        "shfl": sum(op.startswith("SHFL") for op in ops),
        "mufu": sum(op.startswith("MUFU") for op in ops),
    }


def load_baseline(rev: str):
    """The triton_scan module at git revision ``rev`` (written to a temp file: Triton needs the source)."""
    src = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:mambamil/ops/triton_scan.py"], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    path = Path(tempfile.mkdtemp()) / "triton_scan_baseline.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("triton_scan_baseline", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def baseline_variants(mod, b: int, d: int, n: int, L: int) -> tuple[list, int]:
    """(name, pass, fn, constexprs, warps, int args, elements per program) of issue 10's kernels; saved bytes."""
    import triton

    flags = {"HAS_D": True, "HAS_Z": True, "HAS_BIAS": True, "SOFTPLUS": True, "NP": triton.next_power_of_2(n),
             "BLOCK_L": mod.BLOCK_L}  # fmt: skip
    nc = triton.cdiv(L, mod.BLOCK_L)
    ints = {"d": d, "n": n, "L": L, "nc": nc}
    tile = lambda bd: bd * triton.next_power_of_2(n) * mod.BLOCK_L  # noqa: E731
    cs = {"BLOCK_DN": mod.BLOCK_DN, "BLOCK_C": mod.BLOCK_C}
    cint = {"total": b * d * n, "nc": nc}
    cel = mod.BLOCK_DN * mod.BLOCK_C * mod.BLOCK_L  # one chunk lane stands for BLOCK_L steps
    fb, bb = mod.FWD_BLOCK_D, mod.BWD_BLOCK_D
    fw, bw, w4 = {"num_warps": mod.FWD_WARPS}, {"num_warps": mod.BWD_WARPS}, {"num_warps": 4}
    out = [
        ("F1 fwd_chunk_states", "fwd", mod._scan_fwd_kernel, {**flags, "FINAL": False, "BLOCK_D": fb}, fw, ints,
         tile(fb)),
        ("F2 chunk_scan", "fwd", mod._chunk_scan_kernel, {**cs, "REVERSE": False}, w4, cint, cel),
        ("F3 fwd_output", "fwd", mod._scan_fwd_kernel, {**flags, "FINAL": True, "BLOCK_D": fb}, fw, ints, tile(fb)),
        ("B1 bwd_chunk_adjoints", "bwd", mod._scan_bwd_kernel, {**flags, "FINAL": False, "BLOCK_D": bb}, bw, ints,
         tile(bb)),
        ("B2 chunk_scan_reverse", "bwd", mod._chunk_scan_kernel, {**cs, "REVERSE": True}, w4, cint, cel),
        ("B3 bwd_gradients", "bwd", mod._scan_bwd_kernel, {**flags, "FINAL": True, "BLOCK_D": bb}, bw, ints, tile(bb)),
    ]  # fmt: skip
    return out, (b * d * n * nc * 4, 2 * b * d * n * nc * 4 + 2 * 4 * b * n * L)


def table(title: str, variants: list, dtype: str, arch: int) -> dict:
    """Compile and print one table; returns per-pass SHFL / MUFU per element and the max registers / spills."""
    print(f"\n## {title}\n")
    print("| kernel | warps | registers | spill B | smem B | SASS instr | SHFL | MUFU | SHFL / (d,n,t) | "
          "MUFU / (d,n,t) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    tot = {"fwd": [0.0, 0.0], "bwd": [0.0, 0.0], "regs": 0, "spill": 0}
    for name, pas, fn, consts, options, ints, elems in variants:
        s = stats(_compile(fn, consts, options, ints, dtype, arch), arch)
        lanes = 32 * options["num_warps"]  # every static instruction runs once per thread
        sh, mu = s["shfl"] * lanes / elems, s["mufu"] * lanes / elems
        tot[pas][0] += sh
        tot[pas][1] += mu
        tot["regs"], tot["spill"] = max(tot["regs"], s["regs"]), max(tot["spill"], s["spill"])
        cap = f" (cap {options['maxnreg']})" if "maxnreg" in options else ""
        print(f"| {name} | {options['num_warps']} | {s['regs']}{cap} | {s['spill']} | {s['smem']} | {s['sass']} | "
              f"{s['shfl']} | {s['mufu']} | {sh:.2f} | {mu:.2f} |")  # fmt: skip
    for pas in ("fwd", "bwd"):
        print(f"| **{pas} total** | | | | | | | | {tot[pas][0]:.2f} | {tot[pas][1]:.2f} |")
    return tot


def scan2d_table(arch: int) -> None:
    """The 2D scan's forward kernel (mambamil.ops.triton_scan2d, issue 29): fp32 inputs, one cell per iteration."""
    from mambamil.ops import triton_scan2d as t2

    kernel, options, elems = t2.compile_kernel(arch)
    s = stats(kernel, arch)
    lanes = 32 * options["num_warps"]
    print("\n## 2D scan (issue 29), fp32, d=1024, n=16; loop iteration = one grid cell of one channel block\n")
    print("| kernel | warps | registers | spill B | smem B | SASS instr | SHFL | MUFU | SHFL / (d,n,cell) | "
          "MUFU / (d,n,cell) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    sh, mu = s["shfl"] * lanes / elems, s["mufu"] * lanes / elems
    print(f"| S1 scan2d_fwd | {options['num_warps']} | {s['regs']} | {s['spill']} | {s['smem']} | {s['sass']} | "
          f"{s['shfl']} | {s['mufu']} | {sh:.2f} | {mu:.2f} |")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", type=int, default=90, help="compute capability x10 (default: %(default)s, H100/H200)")
    ap.add_argument("--dtype", default="bf16", help="dtype of u, delta, B, C, z (fp32, fp16, bf16)")
    ap.add_argument("--baseline", default="dad97fa", help="git revision of the baseline kernels ('' to skip)")
    args = ap.parse_args()
    from mambamil.ops import triton_scan as ts

    b, d, n, L = SHAPE["b"], SHAPE["d"], SHAPE["n"], SHAPE["L"]
    print(f"# Triton scan kernels for sm_{args.arch}, {args.dtype} inputs, specialised for b={b}, d={d}, n={n}, "
          f"L={L} (16-aligned pointers)")  # fmt: skip
    t0 = time.perf_counter()
    res = {}
    if args.baseline:
        old = load_baseline(args.baseline)
        variants, saved = baseline_variants(old, b, d, n, L)
        res["baseline"] = (table(f"baseline ({args.baseline}, issue 10)", variants, args.dtype, args.arch), saved)
    variants = ts.kernel_variants(b, d, n, L)
    saved = (ts.saved_state_bytes(b, d, n, L), ts.backward_scratch_bytes(b, d, n, L))
    res["new"] = (table("new (issue 20)", variants, args.dtype, args.arch), saved)
    scan2d_table(args.arch)
    print(f"\n# compiled in {time.perf_counter() - t0:.1f} s\n")
    print("| version | max registers | max spill B | SHFL / (d,n,t) fwd / bwd | MUFU / (d,n,t) fwd / bwd | "
          f"states saved for backward at L={L} | backward transient buffers |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name, (tot, saved) in res.items():
        print(f"| {name} | {tot['regs']} | {tot['spill']} | {tot['fwd'][0]:.2f} / {tot['bwd'][0]:.2f} | "
              f"{tot['fwd'][1]:.2f} / {tot['bwd'][1]:.2f} | {saved[0] / 1e6:.1f} MB | "
              f"{saved[1] / 1e6:.1f} MB |")  # fmt: skip


if __name__ == "__main__":
    main()
