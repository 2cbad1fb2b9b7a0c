"""Planning cost of layer_decay: tunespec.plan on the synthetic 100,000-tensor mixture-of-experts
model of benchmarks/run.py (64 experts per block), with and without one numbered layer entry
(one layer per expert of every block, so 781 x 64 layers). Medians of warm calls, side by side.

Run: python benchmarks/layer_decay.py [--tensors N] [--repeats N]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tensors", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import tunespec
    from run import torch_moe

    model, _ = torch_moe(args.tensors)
    plain = {"freeze": [r"blocks\.0\..*"]}
    decayed = {**plain, "layer_decay": {"rate": 0.999, "layers": [r"blocks\.(\d+)\.experts\.(\d+)\..*"]}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for spec in (plain, decayed):
            tunespec.plan(model, spec)  # warm
        times: dict[str, list[float]] = {"plain": [], "layer_decay": []}
        for _ in range(args.repeats):
            for key, spec in (("plain", plain), ("layer_decay", decayed)):
                start = time.perf_counter()
                tunespec.plan(model, spec)
                times[key].append(time.perf_counter() - start)
    plain_s, decay_s = (statistics.median(times[k]) for k in ("plain", "layer_decay"))
    print(f"plan, {args.tensors:,} tensors: {plain_s:.3f} s; with layer_decay: {decay_s:.3f} s "
          f"(+{decay_s - plain_s:.3f} s)")


if __name__ == "__main__":
    main()
