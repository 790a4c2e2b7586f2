"""BatchNorm folding: forward time of a backbone loaded folded and unfolded, paired in one process.

    python scripts/bench_fold.py [--backbone lite0] [--batch 32] [--repeats 3] [--pairs 3]

Alternates the two models so that any drift of the machine's speed hits both, and
prints each timing, the medians and the largest feature difference.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from shiftbench.embedding import load_backbone


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="lite0")
    ap.add_argument("--weights", default=None, help="e.g. none for a random torchvision model")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="batches per timing")
    ap.add_argument("--pairs", type=int, default=3)
    a = ap.parse_args()
    models = {f: load_backbone(a.backbone, a.weights, device="cpu", fuse=f) for f in (False, True)}
    size = models[True].preprocess.size
    x = torch.randn(a.batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    x = x.contiguous(memory_format=torch.channels_last)
    diff = (models[False].embed(x)[0] - models[True].embed(x)[0]).abs().max().item()
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(a.pairs):
        for f in (False, True):
            t = time.perf_counter()
            for _ in range(a.repeats):
                models[f].embed(x)
            times[f].append(time.perf_counter() - t)
    n = a.batch * a.repeats
    for f, label in ((False, "unfolded"), (True, "folded")):
        med = statistics.median(times[f])
        print(f"{label:9s} {[round(t, 2) for t in times[f]]} s for {n} images; median {n / med:.1f} img/s")
    print(f"time folded / unfolded (medians): {statistics.median(times[True]) / statistics.median(times[False]):.3f}; "
          f"max |feature difference| {diff:.2e}; torch threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
