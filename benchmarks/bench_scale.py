"""Calibration cost against log size (prints numbers; not a test).

    python benchmarks/bench_scale.py                       # 0.1M, 1M, 10M x both shapes (about 20 min)
    python benchmarks/bench_scale.py --sizes 0.1M,1M       # smaller grid
    python benchmarks/bench_scale.py --fidelity            # also the fidelity harness on the largest logs
    python benchmarks/bench_scale.py --json benchmarks/results/bench_scale.json

For each shape (``movielens``: ML-like users and items, explicit ratings, temporal split;
``longtail``: music-like, items >> users, implicit play counts, no timestamps, random split; see
:func:`simrec.data.synthetic.synthetic_log`) and size, a fresh subprocess generates the log, splits it
and runs :func:`simrec.data.calibration.calibrate` with ``simrec/MovieLens-v0``'s settings. It reports
calibration seconds and the peak resident memory of the calibration (the high-water mark is reset
just before it, so the log generator's own peak does not count), then the time to store the world in a
:class:`~simrec.data.calibration.WorldCache` and to load it back. The growth exponent is the slope of
log(seconds) against log(interactions) per shape.

References measured in the same run: the previous implementation (``watch_method="dense"``, the exact
gradient over every user x item cell) on the 0.1M logs, and a fixed numpy workload (sorting 10M random
int64 keys) that says how fast this machine is right now.
Targets on the 2-core reference machine: 1M (ML-1M shape) < 60 s; 10M with 30k items < 10 min and
< 8 GiB; the harness on the 10M log (sampled users) < 10 min more.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = {"0.01M": 10_000, "0.1M": 100_000, "1M": 1_000_000, "10M": 10_000_000}


def _peak_reset() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset VmHWM to the current RSS
        return True
    except OSError:
        return False


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def worker(shape: str, n: int, method: str, fidelity: bool, users: int) -> dict:
    import numpy as np

    from simrec.data.calibration import Calibration, CalibrationConfig, WorldCache, calibrate
    from simrec.data.split import split_log
    from simrec.data.synthetic import synthetic_log
    from simrec.envs.spec import resolve_spec

    t = time.perf_counter()
    log = synthetic_log(shape, n)
    gen_s = time.perf_counter() - t
    split = split_log(log, {"kind": "ratio" if shape == "movielens" else "random"})
    sp = resolve_spec("movielens-v0")
    cfg = CalibrationConfig(**{**dict(sp.world.calibration), "watch_method": method})
    exact = _peak_reset()
    base = _rss_kib("VmRSS")
    t = time.perf_counter()
    cal = calibrate(split.train, cfg, sp.choice, seed=0)
    cal_s = time.perf_counter() - t
    peak = _rss_kib("VmHWM") if exact else _rss_kib("VmPeak")
    out = {"shape": shape, "interactions": len(log), "users": log.n_users, "items": log.n_items,
           "train": len(split.train), "method": method, "generate_s": round(gen_s, 2),
           "calibrate_s": round(cal_s, 2), "peak_rss_mib": round(peak / 1024, 1),
           "log_rss_mib": round(base / 1024, 1), "peak_exact": exact,
           "report": {k: v for k, v in cal.report.items() if isinstance(v, (int, float))}}
    with tempfile.TemporaryDirectory() as d:
        cache = WorldCache(d)
        t = time.perf_counter()
        cache.save("bench", cal)
        out["cache_store_s"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        back = cache.load("bench")
        out["cache_load_s"] = round(time.perf_counter() - t, 2)
        assert isinstance(back, Calibration) and len(back.personas.personas) == len(cal.personas.personas)
    if fidelity:
        out["fidelity"] = _fidelity(log, split, cal, sp, users)
    del np
    return out


def _fidelity(log, split, cal, sp, users: int) -> dict:
    from simrec.data.calibration import CalibratedWorld
    from simrec.data.fidelity import run_fidelity

    world = CalibratedWorld(cal.catalog, cal.personas, cal.transitions, cal.choice, log=log, split=split,
                            user_index=cal.user_index, report=cal.report)
    t = time.perf_counter()
    res = run_fidelity(sp, config={"seeds": [0], "max_users": users}, baselines=True, worlds={0: world})
    s = res.summary()
    return {"seconds": round(time.perf_counter() - t, 1), "max_users": users,
            "embedded": {k: v["mean"] for k, v in s["embedded"].items()}}


def reference_sort() -> float:
    import numpy as np

    x = np.random.default_rng(0).integers(0, 2**62, 10_000_000)
    t = time.perf_counter()
    np.sort(x)
    return time.perf_counter() - t


def run_one(shape: str, n: int, method: str, fidelity: bool, users: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", shape, str(n), method, str(int(fidelity)), str(users)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return {"shape": shape, "interactions": n, "method": method, "error": r.stderr.strip()[-2000:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def growth(rows: list[dict]) -> float | None:
    pts = [(math.log(r["interactions"]), math.log(r["calibrate_s"])) for r in rows if "calibrate_s" in r]
    if len(pts) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="0.1M,1M,10M", help="comma-separated, from " + ",".join(SIZES))
    ap.add_argument("--shapes", default="movielens,longtail")
    ap.add_argument("--no-reference", action="store_true", help="skip the dense reference on the 0.1M logs")
    ap.add_argument("--fidelity", action="store_true", help="run the harness (1 seed, sampled users) on the "
                                                             "largest size")
    ap.add_argument("--fidelity-users", type=int, default=2000)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        shape, n, method, fid, users = a.worker
        print(json.dumps(worker(shape, int(n), method, fid == "1", int(users))))
        return
    sizes = [s.strip() for s in a.sizes.split(",") if s.strip()]
    shapes = [s.strip() for s in a.shapes.split(",") if s.strip()]
    ref = reference_sort()
    print(f"reference: numpy sort of 10M int64 keys {ref:.2f} s", flush=True)
    rows: list[dict] = []
    for shape in shapes:
        for size in sizes:
            fid = a.fidelity and size == sizes[-1]
            r = run_one(shape, SIZES[size], "sampled", fid, a.fidelity_users)
            r["size"] = size
            rows.append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "report"}), flush=True)
        if not a.no_reference and "0.1M" in sizes:
            r = run_one(shape, SIZES["0.1M"], "dense", False, 0)
            r["size"] = "0.1M"
            rows.append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "report"}), flush=True)
    ref2 = reference_sort()
    print(f"reference again: {ref2:.2f} s")
    exps = {s: growth([r for r in rows if r["shape"] == s and r["method"] == "sampled"]) for s in shapes}
    print("\n| shape | interactions | users | items | calibrate s | x sort ref | peak MiB | cache load s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['shape']} | {r['interactions']:,} | error: {r['error'][-200:]} |")
            continue
        tag = "" if r["method"] == "sampled" else " (dense, previous)"
        print(f"| {r['shape']}{tag} | {r['interactions']:,} | {r['users']:,} | {r['items']:,} | "
              f"{r['calibrate_s']:.1f} | {r['calibrate_s'] / ref:.0f}x | {r['peak_rss_mib']:,.0f} | "
              f"{r['cache_load_s']:.2f} |")
    for s, e in exps.items():
        print(f"growth exponent ({s}, sampled): {e:.2f}" if e is not None else f"growth exponent ({s}): n/a")
    for r in rows:
        if "fidelity" in r:
            f = r["fidelity"]
            m = f["embedded"]
            print(f"fidelity harness on {r['shape']} {r['size']} ({f['max_users']} users, 1 seed): {f['seconds']} s; "
                  + ", ".join(f"{k} {m[k]:.3f}" for k in ("acc@1:1", "rmse", "tv", "pop_spearman", "pop_curve", "pop_choice_curve",
                                            "activity_ks", "activity_ks_matched")
                              if m.get(k) is not None))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                                  "python": platform.python_version()},
                                      "reference_sort_s": [round(ref, 3), round(ref2, 3)], "rows": rows,
                                      "growth_exponent": exps}, indent=1))


if __name__ == "__main__":
    main()
