"""Agreement of `simrec/MovieLensSeq-v1` with one of its calibrated pieces switched off (prints a table; not a test).

    python experiments/agreement_ablation.py --json benchmarks/results/agreement-ablation.json
    python experiments/agreement_ablation.py --variants no-popularity-shift --seeds 2

Each variant reruns ``simrec agreement --env simrec/MovieLensSeq-v1`` (5 seeds, 200 users, the whole zoo) with
calibration overrides; ``simrec/MovieLensSeq-v0`` (sequence weight by likelihood, no slate choosiness, no
popularity shift) and v1 itself are the two ends, in ``agreement-ml100k-seq.json`` and
``agreement-ml100k-seq-v1.json``. About 8 minutes per variant on the 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

VARIANTS = {
    "no-popularity-shift": {"fit_popularity_shift": False},
    "no-slate-choosiness": {"fit_slate_no_click": False},
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "ml-100k"))
    p.add_argument("--variants", default="no-popularity-shift", help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if not (Path(a.data) / "u.data").exists():
        print(f"skipped: MovieLens-100K not found at {a.data} (pass --data DIR)", file=sys.stderr)
        return 0
    from simrec.evaluation.agreement import agreement

    out: dict[str, object] = {"env": "simrec/MovieLensSeq-v1", "seeds": a.seeds, "variants": {}}
    print("| variant | calibration overrides | Kendall tau-b [95% CI] | sign agreement | seconds |\n|---|---|---|---|---|")
    for name in a.variants.split(","):
        t = time.perf_counter()
        res = agreement(a.data, seeds=list(range(a.seeds)), env_id="simrec/MovieLensSeq-v1",
                        world={"calibration": VARIANTS[name]}, progress=True)
        stats = res.agreement()
        secs = round(time.perf_counter() - t, 1)
        out["variants"][name] = {"calibration": VARIANTS[name], **stats, "seconds": secs, "result": res.to_dict()}
        print(f"| {name} | `{json.dumps(VARIANTS[name])}` | {stats['kendall_tau_b']:.3f} [{stats['ci_low']:.3f}, "
              f"{stats['ci_high']:.3f}] | {stats['sign_agreement']:.3f} | {secs} |", flush=True)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=1, default=float) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
