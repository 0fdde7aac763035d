"""Time and peak memory of calibrating MovieLens and of the full fidelity harness (prints numbers; not a test).

    python benchmarks/bench_fidelity.py              # ML-100K: one calibration, then the 5-seed harness
    python benchmarks/bench_fidelity.py --quick      # 2 seeds
    python benchmarks/bench_fidelity.py --data ../shared/datasets/ml-1m --variant ml-1m --seeds 1

Target on the 2-core reference machine: calibration of ML-100K plus the full harness (5 seeds, which
recalibrates per seed) in under 10 minutes with the embedded backend. Both run with the on-disk cache
off; ``cache_hit_s`` is then the time to build the same world from a fresh cache entry.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

from simrec.data.calibration import build_calibrated_world, movielens_settings
from simrec.data.fidelity import FidelityConfig, run_fidelity
from simrec.envs.spec import EnvSpec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/datasets/ml-100k")
    ap.add_argument("--variant", default="auto")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="2 seeds")
    ap.add_argument("--json", metavar="FILE", help="also write the numbers here")
    args = ap.parse_args()
    if not Path(args.data).exists():
        print(f"dataset not found at {args.data}; pass --data DIR (an unpacked ml-100k or ml-1m directory)")
        return 2
    spec = EnvSpec.builtin("movielens-v0").with_overrides(
        world={"data_dir": args.data, "variant": args.variant, "cache": False})
    t0 = time.perf_counter()
    world = build_calibrated_world(movielens_settings(spec.world), seed=0, choice=spec.choice)
    t_cal = time.perf_counter() - t0
    seeds = 2 if args.quick else args.seeds
    t1 = time.perf_counter()
    res = run_fidelity(spec, None, FidelityConfig(seeds=list(range(seeds))))
    t_harness = time.perf_counter() - t1
    summ = res.summary()["embedded"]
    with tempfile.TemporaryDirectory() as tmp:
        cached = movielens_settings(spec.with_overrides(world={"cache": True, "cache_dir": tmp}).world)
        build_calibrated_world(cached, seed=0, choice=spec.choice)  # stores the entry
        t2 = time.perf_counter()
        hit = build_calibrated_world(cached, seed=0, choice=spec.choice)
        t_hit = time.perf_counter() - t2
        assert hit.report.get("cache") == "hit"
    out = {
        "dataset": world.split.summary(),
        "calibration_s": round(t_cal, 1),
        "harness_s": round(t_harness, 1),
        "calibration_plus_harness_s": round(t_cal + t_harness, 1),
        "cache_hit_s": round(t_hit, 2),
        "seeds": seeds,
        "per_seed_calibration_s": res.info["timing"]["calibration_s"],
        "per_seed_embedded_s": res.info["timing"]["embedded_s"],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "metrics": {m: round(v["mean"], 4) for m, v in summ.items() if v["mean"] is not None},
        "machine": f"{platform.machine()} {platform.python_version()}",
    }
    print(json.dumps(out, indent=1))
    print(res.markdown())
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
