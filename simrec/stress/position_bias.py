"""Position bias: do simulated users click an item for what it is, or for where it sits on the slate?

The rows of this test are **user backends**, not recommenders: ``embedded`` (the numpy choice model, whose
logit has an explicit attention term ``-position_decay * log(k + 1)``) and ``llm`` (an LLM playing each
persona; the bundled SmolLM2-135M unless ``--base-url`` names another server). Both see the same users and
the same slates in the same orders.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from simrec.cognition.base import SOURCE_FALLBACK, CognitionBackend
from simrec.cognition.embedded import EmbeddedCognition
from simrec.cognition.llm import LLMCognition
from simrec.errors import ConfigError
from simrec.evaluation.compare import make_env, user_schedule
from simrec.stress.llm_users import LLMUsersTest

BACKENDS = ("embedded", "llm")


def presentation_orders(rng: np.random.Generator, n: int, k: int, orders: int) -> np.ndarray:
    """``(n, orders, k)`` permutations of slate positions: the original order, the reversed one, then
    random permutations (fresh for each slate)."""
    out = np.empty((n, orders, k), dtype=np.int64)
    out[:, 0] = np.arange(k)
    if orders > 1:
        out[:, 1] = np.arange(k)[::-1]
    if orders > 2:
        out[:, 2:] = np.argsort(rng.random((n, orders - 2, k)), axis=-1)
    return out


def position_stats(clicked: np.ndarray, orders: np.ndarray, valid: np.ndarray | None = None) -> dict[str, Any]:
    """Click statistics of ``clicked`` ``(n, o, k)`` (slate ``i`` in order ``j``: which positions were clicked),
    where ``orders[i, j, p]`` is the slate item shown at position ``p``; ``valid`` ``(n, o)`` masks presentations.

    * ``rate[p]``: clicks at position ``p`` per presentation.
    * ``follows_item`` / ``follows_slot``: for every ordered pair of presentations (a, b) of one slate and every
      item clicked in a that sits elsewhere in b, the share of b clicking that item again / clicking the slot
      it held in a (chance: about ``ctr / k``). Sharp for deterministic users; noisy choices pull both down.
    * ``slot_share``: how much of the click variance the slot explains rather than the item's identity.
      Each click indicator is split into a position effect (``rate`` at its position) and an item effect
      (the mean residual of that item for that user over the slate's orders); both variances are corrected
      for sampling noise, and ``slot_share = var_position / (var_position + var_item)``: 0 when clicks follow
      the items, 1 when they follow the slots.
    """
    n, o, k = clicked.shape
    valid = np.ones((n, o), bool) if valid is None else valid.astype(bool)
    shown = int(valid.sum())
    clicks = clicked & valid[:, :, None]
    rate = clicks.sum(axis=(0, 1)) / max(shown, 1)
    where = np.argsort(orders, axis=-1)  # where[i, j, x]: position of slate item x in order j
    item_clicked = np.take_along_axis(clicks, where, axis=-1)  # (n, o, k) by slate item
    moved = followed_item = followed_slot = 0
    for a in range(o):
        for b in range(o):
            if a == b:
                continue
            both = (valid[:, a] & valid[:, b])[:, None]
            src = item_clicked[:, a] & (where[:, a] != where[:, b]) & both
            moved += int(src.sum())
            followed_item += int((src & item_clicked[:, b]).sum())
            followed_slot += int((src & np.take_along_axis(clicks[:, b], where[:, a], axis=-1)).sum())
    # Variance decomposition: position effect vs the item's own effect, both noise-corrected.
    var_pos = max(0.0, float(rate.var() - (rate * (1 - rate)).mean() / max(shown, 1) * (k - 1) / k))
    m = valid.sum(axis=1)  # presentations per slate
    ok = m >= 2
    resid = np.where(valid[:, :, None], item_clicked - rate[where], 0.0)[ok]
    mean = resid.sum(axis=1) / m[ok, None]
    within = (np.where(valid[ok][:, :, None], resid - mean[:, None, :], 0.0) ** 2).sum(axis=1) / (m[ok, None] - 1)
    var_item = max(0.0, float((mean ** 2 - within / m[ok, None]).mean())) if ok.any() else float("nan")
    total = float(rate.sum())
    return {
        "rate": rate.tolist(),
        "ctr": float(clicks.any(axis=-1).sum() / max(shown, 1)),
        "top_share": float(rate[0] / total) if total else float("nan"),
        "top_bottom_ratio": float(rate[0] / rate[-1]) if rate[-1] else (float("inf") if rate[0] else float("nan")),
        "peak_position": float(np.argmax(rate) + 1) if total else float("nan"),
        "peak_share": float(rate.max() / total) if total else float("nan"),
        "follows_item": followed_item / moved if moved else float("nan"),
        "follows_slot": followed_slot / moved if moved else float("nan"),
        "slot_share": var_pos / (var_pos + var_item) if var_pos + var_item > 0 else float("nan"),
        "presentations": shown,
    }


class PositionBias(LLMUsersTest):
    name: ClassVar[str] = "position_bias"
    orders: ClassVar[int] = 6
    llm_pairs: ClassVar[int] = 3
    llm_orders: ClassVar[int] = 3
    default_episodes: ClassVar[int] = 2000
    question: ClassVar[str] = ("Do simulated users click an item for what it is or for where it sits on the slate? "
                               "(rows: user backends, the embedded choice model and LLM users)")
    protocol: ClassVar[str] = (
        f"Rows are user backends, not recommenders. Per seed the population is reset and `episodes` (default "
        f"{default_episodes}) (user, slate) pairs are drawn: users by activity, slates of `slate_size` items "
        f"uniformly from the catalog. Each slate is shown to its user in {orders} orders (original, reversed, then "
        "random permutations), each presentation a decision of the backend on the same, untouched user state (no "
        f"dynamics step runs between them). The LLM row takes the first {llm_pairs} pairs in their first "
        f"{llm_orders} orders ({llm_pairs * llm_orders} calls per seed, cached).")
    metric: ClassVar[str] = (
        "ctr (presentations with a click); top_share (share of clicks on position 1); top_bottom_ratio (click "
        "rate at position 1 / at the last one); peak_position, peak_share (the most-clicked position, its share "
        "of clicks: 1/slate_size is no position effect); follows_item / follows_slot (for an item clicked in one "
        "order that sits elsewhere in another: share of those presentations clicking the item again / the slot "
        "it left; chance about ctr/slate_size); slot_share (share of the click variance explained by the slot "
        "rather than the item's identity, noise-corrected: 0 clicks follow the items, 1 the slots); "
        "fallback_rate (LLM decisions answered by the embedded fallback, left out of the rest)")
    default_recommenders: ClassVar[tuple[str, ...]] = BACKENDS
    higher_is_better: ClassVar[dict[str, bool]] = {}  # descriptive: neither direction is better

    def needs_llm(self) -> bool:
        return "llm" in self.recommenders

    def curve_axes(self) -> dict[str, tuple[str, str]]:
        return {"click rate by position": ("slate position (0 = top)", "clicks per presentation")}

    def run_seed(self, seed: int, recommenders: Sequence[str]) -> tuple[dict[str, dict[str, float]],
                                                                        dict[str, dict[str, list[float]]]]:
        bad = [r for r in recommenders if r not in BACKENDS]
        if bad:
            raise ConfigError(f"position_bias rows are user backends; got {bad}. Fix: --recommenders "
                              f"{','.join(BACKENDS)} (or a subset)")
        env = make_env(self.config.env, self.config.overrides)
        sim, spec = env.sim, env.sim_spec
        k = spec.slate_size
        sim.reset_population(np.random.default_rng([seed, 31]))
        pop = sim.pop
        users = np.array([pop.index_of(u) for u in user_schedule(env, seed, self.episodes)])
        rng = np.random.default_rng([seed, 37])
        slates = np.argsort(rng.random((users.size, len(pop.catalog))), axis=1)[:, :k]
        orders = presentation_orders(rng, users.size, k, self.orders)
        metrics: dict[str, dict[str, float]] = {}
        curve: dict[str, list[float]] = {}
        for name in recommenders:
            if name == "embedded":
                n, o = users.size, self.orders
                backend: CognitionBackend = EmbeddedCognition(spec.choice)
            else:
                n, o = min(self.llm_pairs, users.size), min(self.llm_orders, self.orders)
                backend = LLMCognition(self.llm_config(fallback_choice=spec.choice.model_dump()))
            ords = orders[:n, :o]
            shown = np.take_along_axis(slates[:n, None, :], ords, axis=-1).reshape(n * o, k)
            try:
                # decide() reads the population and never writes it: every order meets the same user
                resp = backend.decide(pop, np.repeat(users[:n], o), shown, np.random.default_rng([seed, 41]))
            finally:
                backend.close()
            valid = (np.asarray(resp.source) != SOURCE_FALLBACK).reshape(n, o)
            st = position_stats(resp.clicked.reshape(n, o, k), ords, valid)
            curve[name] = st.pop("rate")
            st["fallback_rate"] = 1.0 - st.pop("presentations") / (n * o)
            metrics[name] = st
        env.close()
        return metrics, {"click rate by position": curve}
