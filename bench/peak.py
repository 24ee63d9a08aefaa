"""This CPU's measured float32 peak: ``python -m bench.peak THREADS`` prints GFLOP/s as JSON.

A large float32 matrix product through numpy's BLAS (OpenBLAS in the numpy wheel) is as close
to the FMA units' throughput as portable code gets; it is the "physical limit" the model's own
GFLOP/s is compared against. BLAS threads are pinned before numpy loads.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> int:
    threads = sys.argv[1] if len(sys.argv) > 1 else "1"
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = threads
    import numpy as np

    n = 2048
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up: thread start, page faults
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        rates.append(2 * n**3 / (time.perf_counter() - t0) / 1e9)
    rates.sort()
    print(
        json.dumps(
            {
                "method": f"numpy float32 matmul {n}x{n}, best of {repeats}",
                "threads": int(threads),
                "gflops_best": round(rates[-1], 1),
                "gflops_median": round(rates[len(rates) // 2], 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
