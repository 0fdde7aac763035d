"""Shilling: how much exposure can fake users buy for target items by poisoning a recommender's training data?

The attack is the classic bandwagon attack written for implicit feedback: every fake user "clicked" all the
target items plus a random handful of the most popular items (the filler makes the fakes look like ordinary
users of the hits, so the targets co-occur with what everyone consumes). Only recommenders fitted on the
logged data can be poisoned; the online baselines never read it, are run once per seed and reported with a
lift of exactly 1 (the same users, the same events). The detector is a DegSim-style check (Chirita et al.,
2005) that needs no knowledge of the targets: a user whose nearest neighbours are unusually similar to them
(mean Jaccard similarity to the 5 most similar profiles more than 3 robust deviations above the median) is
flagged. Fakes that share a block of items are such users where real profiles are short and sparse (the
synthetic worlds); where real users have long, overlapping profiles (MovieLens-100K) their own neighbours are as
similar and the check misses most fakes.

BPR is not among the defaults: ``implicit`` fits it by lock-free SGD on every core, so one seed does not give
one result (add it with ``--recommenders``; its rows then vary between identical runs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from simrec.evaluation.compare import build_recommender, fit_interactions, make_env, record_run, user_schedule
from simrec.recommenders import Interactions, fitted_names
from simrec.stress.base import StressTest


def pick_targets(fit: Interactions, seed: int, count: int, quantile: float = 0.25) -> np.ndarray:
    """``count`` items drawn by seed from the least popular ``quantile`` of the fit data (ties broken at random)."""
    rng = np.random.default_rng([seed, 29])
    order = np.lexsort((rng.random(fit.n_items), fit.popularity()))
    low = order[:max(count, int(quantile * fit.n_items))]
    return np.sort(rng.choice(low, size=count, replace=False))


def fake_profiles(fit: Interactions, targets: np.ndarray, n_fake: int, seed: int, *, filler: int = 20,
                  bandwagon: int = 60) -> list[np.ndarray]:
    """``n_fake`` bandwagon profiles: every target plus ``filler`` items drawn among the ``bandwagon`` most
    popular non-target items of the fit data. The same seed gives the same first profiles for any ``n_fake``,
    so a larger attack adds fakes to a smaller one."""
    pop = fit.popularity().copy()
    pop[targets] = -1.0
    top = np.argsort(-pop, kind="stable")[:bandwagon]
    rng = np.random.default_rng([seed, 31])
    return [np.concatenate([targets, rng.choice(top, size=min(filler, top.size), replace=False)])
            for _ in range(n_fake)]


def poison(fit: Interactions, profiles: Sequence[np.ndarray]) -> Interactions:
    """``fit`` plus one user per profile (ids ``shill0000``, ...; weight 1, after every real interaction)."""
    if not profiles:
        return fit
    n_real = fit.n_users
    users = np.concatenate([np.full(p.size, n_real + j, np.int64) for j, p in enumerate(profiles)])
    items = np.concatenate(profiles).astype(np.int64)
    t0 = int(fit.timestamp.max()) + 1 if len(fit) else 0
    rating = None if fit.rating is None else np.concatenate([fit.rating, np.full(items.size, np.nan, fit.rating.dtype)])
    return Interactions(np.concatenate([fit.user, users]), np.concatenate([fit.item, items]),
                        np.concatenate([fit.weight, np.ones(items.size, np.float32)]),
                        np.concatenate([fit.timestamp, t0 + np.arange(items.size, dtype=np.int64)]),
                        list(fit.user_ids) + [f"shill{j:04d}" for j in range(len(profiles))], fit.n_items,
                        rating=rating, name=f"{fit.name}+{len(profiles)} shills")


def degsim_flags(data: Interactions, k: int = 5, z: float = 3.0) -> np.ndarray:
    """``(n_users,)`` bool: users whose mean Jaccard similarity to their ``k`` most similar profiles lies more
    than ``z`` robust deviations (1.4826 MAD) above the median user's."""
    x = data.matrix(binary=True)
    inter = (x @ x.T).toarray().astype(np.float64)
    size = np.diag(inter).copy()
    jac = inter / np.maximum(size[:, None] + size[None, :] - inter, 1.0)
    np.fill_diagonal(jac, -np.inf)
    k = min(k, data.n_users - 1)
    deg = -np.sort(-jac, axis=1)[:, :k].mean(axis=1) if k > 0 else np.zeros(data.n_users)
    med = np.median(deg)
    mad = 1.4826 * np.median(np.abs(deg - med))
    return deg > med + z * max(mad, 1e-9)


class Shilling(StressTest):
    name: ClassVar[str] = "shilling"
    question: ClassVar[str] = ("How much exposure can fake users buy for target items by poisoning a recommender's "
                               "training data?")
    protocol: ClassVar[str] = (
        "10 target items are drawn by seed from the least popular quarter of the fit data. Fake users, 0%, 5% "
        "and 10% as many as the fit data's real users (each larger attack adds fakes to the smaller), each "
        "clicked every target and 20 of the 60 most popular items (a bandwagon attack). Each fitted recommender "
        "is fitted on each poisoned copy and serves the same `episodes` real users (compare's schedule); online "
        "baselines never read the fit data and run once. A DegSim detector (mean Jaccard similarity to the 5 "
        "nearest profiles, flagged above median + 3 robust deviations) is scored against the known fakes.")
    metric: ClassVar[str] = (
        "exposure@a = the targets' share of impressions under attack size a divided by their share of the "
        "catalog (1: their fair share), lift@a = (1 + target impressions) / impressions at a over the same at "
        "0% (add-one, so a clean run that never shows a target gives a finite lift), target_ctr and ctr = the "
        "CTR of target impressions and of all impressions at the largest attack (do real users want what was "
        "pushed?), precision and recall = the detector's against the fakes at the largest attack (row "
        "'detector'; its curve has every attack size and the share of real users it flags)")
    default_recommenders: ClassVar[tuple[str, ...]] = ("random", "linucb", "mostpop", "itemknn", "ease", "als")
    default_episodes: ClassVar[int] = 60
    higher_is_better: ClassVar[dict[str, bool]] = {"target_ctr": True, "ctr": True, "precision": True, "recall": True}
    attacks: ClassVar[tuple[float, ...]] = (0.0, 0.05, 0.10)
    n_targets: ClassVar[int] = 10

    def curve_axes(self) -> dict[str, tuple[str, str]]:
        sizes = ", ".join(f"{i}: {a:.0%}" for i, a in enumerate(self.attacks))
        attacked = ", ".join(f"{i}: {a:.0%}" for i, a in enumerate(self.attacks[1:]))
        return {"exposure lift": (f"attack size ({sizes} of the real users)", "targets' exposure lift over the clean fit"),
                "target exposure": (f"attack size ({sizes} of the real users)",
                                    "targets' impression share / their catalog share"),
                "detector": (f"attack size ({attacked} of the real users)", "precision, recall, real users flagged")}

    def serve(self, seed: int, name: str, fit: Interactions | None, users: Sequence[str],
              is_target: np.ndarray) -> tuple[int, int, int, int]:
        """Run ``name`` (fitted on ``fit``) for ``users``: ``(impressions, target impressions, clicks, target
        clicks)``."""
        cfg = self.config
        env = make_env(cfg.env, cfg.overrides)
        rec = build_recommender(name, env, seed, fit, llm_config=cfg.llm)
        tally = np.zeros(4, dtype=np.int64)

        def on_step(info: dict[str, Any]) -> None:
            slate = np.asarray(info["slate_items"])
            clicked = np.asarray(info["clicked"], dtype=bool)
            hit = is_target[slate]
            tally[:] += (slate.size, hit.sum(), clicked.sum(), (clicked & hit).sum())

        record_run(env, rec, seed, users, name=name, on_step=on_step, metadata={"stress": self.name})
        env.close()
        n, t, c, tc = (int(v) for v in tally)
        return n, t, c, tc

    def run_seed(self, seed: int, recommenders: Sequence[str]) -> tuple[dict[str, dict[str, float]],
                                                                        dict[str, dict[str, list[float]]]]:
        cfg = self.config
        env = make_env(cfg.env, cfg.overrides)
        users = user_schedule(env, seed, self.episodes)
        n_items = len(env.catalog)
        env.close()
        fit = fit_interactions(cfg.env, cfg.overrides, seed, fit_episodes=cfg.fit_episodes)
        targets = pick_targets(fit, seed, self.n_targets)
        is_target = np.zeros(n_items, dtype=bool)
        is_target[targets] = True
        sizes = [round(a * fit.n_users) for a in self.attacks]
        shills = fake_profiles(fit, targets, max(sizes), seed)
        poisoned = [poison(fit, shills[:n]) for n in sizes]
        fitted = set(fitted_names())
        # (impressions, target impressions, clicks, target clicks) per recommender and attack size
        counts: dict[str, list[tuple[int, int, int, int]]] = {}
        for name in recommenders:
            # the fit data cannot reach an online recommender: one run stands for every attack size
            runs = [self.serve(seed, name, data, users, is_target) for data in
                    (poisoned if name in fitted else poisoned[:1])]
            counts[name] = runs * len(self.attacks) if len(runs) == 1 else runs
        catalog_share = targets.size / n_items
        metrics: dict[str, dict[str, float]] = {}
        lift_curve: dict[str, list[float]] = {}
        exposure_curve: dict[str, list[float]] = {}  # readable where a lift from ~0 is in the hundreds
        labels = [f"{a:.0%}" for a in self.attacks]
        for name, runs in counts.items():
            rate = [(t + 1) / n for n, t, _, _ in runs]
            lift_curve[name] = [r / rate[0] for r in rate]
            exposure_curve[name] = [t / n / catalog_share for n, t, _, _ in runs]
            n, t, c, tc = runs[-1]
            row = {f"exposure@{labels[0]}": runs[0][1] / runs[0][0] / catalog_share,
                   f"exposure@{labels[-1]}": t / n / catalog_share}
            row.update({f"lift@{lab}": lift_curve[name][i] for i, lab in enumerate(labels) if i})
            row.update({"target_ctr": tc / t if t else float("nan"), "ctr": c / n if n else float("nan"),
                        "precision": float("nan"), "recall": float("nan")})
            metrics[name] = row
        detector: dict[str, list[float]] = {"precision": [], "recall": [], "flagged real users": []}
        for n_fake, data in zip(sizes[1:], poisoned[1:]):  # recall needs fakes to find
            flags = degsim_flags(data)
            fake = np.arange(data.n_users) >= fit.n_users
            hits = int((flags & fake).sum())
            detector["precision"].append(hits / int(flags.sum()) if flags.any() else float("nan"))
            detector["recall"].append(hits / n_fake if n_fake else float("nan"))
            detector["flagged real users"].append(float((flags & ~fake).sum() / fit.n_users))
        cols = next(iter(metrics.values())).keys() if metrics else ()
        metrics["detector"] = {m: float("nan") for m in cols}
        if detector["precision"]:
            metrics["detector"].update(precision=detector["precision"][-1], recall=detector["recall"][-1])
        return metrics, {"exposure lift": lift_curve, "target exposure": exposure_curve, "detector": detector}
