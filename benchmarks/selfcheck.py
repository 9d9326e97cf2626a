"""Cost of the Triton self-check (mambamil/ops/selfcheck.py) that ``auto`` runs once per process, device and dtype.

    python benchmarks/selfcheck.py --device cuda                 # GPU: compiled kernels
    python benchmarks/selfcheck.py --device cpu --dtypes float32 # CPU: Triton's interpreter (TRITON_INTERPRET=1)
    python benchmarks/selfcheck.py --compile-only 90             # no GPU: cold compile of the check's kernels

Per dtype: the first check in this process (on a GPU: includes Triton's JIT compile of the six kernels unless its
disk cache has them; the compile is the same the first training step pays anyway), then ``--repeat`` more checks
(warm), against the baseline measured in the same run: the check's exact reference alone (the float64 ``chunked``
scan, forward + backward, of the same case), and the ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

if "--device" in sys.argv and sys.argv[sys.argv.index("--device") + 1] == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton

import torch

from mambamil.ops import selfcheck
from mambamil.ops.selective_scan import selective_scan_chunked


def reference_seconds(device: torch.device, dtype: torch.dtype) -> float:
    """The float64 chunked forward + backward of the check's case (what the check compares against)."""
    inp = selfcheck._inputs(dtype, device)
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    x = {k: inp[k].double().requires_grad_() for k in names}
    t0 = time.perf_counter()
    y = selective_scan_chunked(**x, delta_softplus=True)
    torch.autograd.grad(y, list(x.values()), inp["grad"].double())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def compile_seconds(arch: int, **shape: int) -> float:
    """Cold compile (a fresh TRITON_CACHE_DIR) of every kernel variant of ``shape`` for sm_ARCH, in float32."""
    import tempfile

    from mambamil.ops import triton_scan

    with tempfile.TemporaryDirectory() as cache:
        os.environ["TRITON_CACHE_DIR"] = cache
        t0 = time.perf_counter()
        for _, _, fn, consts, options, ints, _ in triton_scan.kernel_variants(**shape):
            triton_scan.compile_variant(fn, consts, options, ints, "fp32", arch)
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--compile-only", type=int, metavar="ARCH", help="time the cold compile for sm_ARCH, no GPU")
    args = ap.parse_args()
    if args.compile_only:
        c = selfcheck.CASE
        check = compile_seconds(args.compile_only, b=c["b"], d=c["d"], n=c["n"], L=c["L"])
        train = compile_seconds(args.compile_only)
        print(f"# cold compile of the six kernel variants for sm_{args.compile_only} on this CPU "
              f"({os.cpu_count()} CPUs, {platform.processor() or 'cpu'}), float32, {time.strftime('%Y-%m-%d')}")
        print("| variants | cold compile s | ratio |\n|---|---|---|")
        print(f"| self-check case | {check:.1f} | {check / train:.2f} |")
        print(f"| training size (baseline) | {train:.1f} | 1.00 |")
        return
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"# Triton self-check cost on {device} ({name}), torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")
    if device.type == "cpu":
        print("# CPU: kernels run under Triton's interpreter (TRITON_INTERPRET=1), not a GPU number")
    print("| dtype | passed | largest error (of) | first check s | warm check s (median) | reference alone s | "
          "warm / reference |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for dt in args.dtypes:
        dtype = getattr(torch, dt)
        first = selfcheck.run_selfcheck(device, dtype)
        warm = [selfcheck.run_selfcheck(device, dtype).seconds for _ in range(args.repeat)]
        ref = statistics.median(reference_seconds(device, dtype) for _ in range(max(1, args.repeat)))
        w = statistics.median(warm) if warm else float("nan")
        print(f"| {dt} | {first.passed} | {first.max_error:.1e} ({first.worst}) | {first.seconds:.3f} | {w:.3f} | "
              f"{ref:.3f} | {w / ref:.1f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
