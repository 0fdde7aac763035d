"""Train stable-baselines3 PPO on simrec/Synthetic-v0 and compare it with the baseline recommenders.

    python experiments/train_ppo.py                     # 300k steps, a few minutes on 2 CPU cores
    python experiments/train_ppo.py --timesteps 1000000 --save runs/ppo.zip
    python experiments/train_ppo.py --policy mlp        # plain MLP over the flattened observation

Training runs on simrec's natively batched population (:class:`simrec.envs.sb3.SB3VecEnv`: the same
observations as ``gymnasium.wrappers.FlattenObservation``, and the slate made valid as by
:class:`simrec.envs.wrappers.RepairSlate` or :class:`simrec.envs.wrappers.TopKScores`). Evaluation runs the
frozen policy on the single-user ``SlateEnv`` through ``FlattenObservation(RepairSlate(env))``
(or ``TopKScores``) via :class:`simrec.recommenders.SB3Policy`, next to random, popular and LinUCB
with the same seeds and number of sessions, and prints CTR, session length and return.

``--action repair`` (default): a ``MultiDiscrete`` slate, one categorical over the candidates per
position (repeats repaired); ``--action scores``: a Gaussian score per candidate, slate = top-k.
``--policy slate`` (default) scores every candidate with one shared network (candidate features,
their product with the user's recent-click profile, and the user features), so the policy is
permutation-equivariant over candidates; ``--policy mlp`` is SB3's stock ``MlpPolicy`` over the
flat observation (which learns far more slowly).
A saved model can also be evaluated with ``simrec run --policy runs/ppo.zip``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

ENV_ID = "simrec/Synthetic-v0"


# -- a slate-scoring policy for SB3 ---------------------------------------------------------------
def _layout(obs_space: spaces.Box, num_candidates: int, history_window: int, user_dim: int = 5) -> dict[str, Any]:
    """Where each part of the Dict observation sits in the flat vector (keys in sorted order)."""
    n = obs_space.shape[0]
    # flat = candidates (C*(d+1)) + history (W*(d+4)) + user (5), d unknown: solve for it
    d = (n - user_dim - num_candidates - 4 * history_window) // (num_candidates + history_window)
    if num_candidates * (d + 1) + history_window * (d + 4) + user_dim != n:
        raise ValueError(f"cannot split a flat observation of size {n} into candidates/history/user")
    return {"d": d, "C": num_candidates, "W": history_window, "U": user_dim}


class SlateScorer(BaseFeaturesExtractor):
    """Flat observation -> ``[per-candidate scores (C), pooled state features (hidden)]``."""

    def __init__(self, observation_space: spaces.Box, num_candidates: int, history_window: int, hidden: int = 64):
        lay = _layout(observation_space, num_candidates, history_window)
        super().__init__(observation_space, features_dim=num_candidates + hidden)
        self.lay = lay
        d, u = lay["d"], lay["U"]
        self.item = nn.Sequential(nn.Linear(3 * d + 2 + u, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())
        self.score = nn.Linear(hidden, 1)
        self.state = nn.Sequential(nn.Linear(hidden + d + u, hidden), nn.Tanh())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        C, W, d, U = self.lay["C"], self.lay["W"], self.lay["d"], self.lay["U"]
        B = obs.shape[0]
        cand = obs[:, : C * (d + 1)].reshape(B, C, d + 1)
        hist = obs[:, C * (d + 1): C * (d + 1) + W * (d + 4)].reshape(B, W, d + 4)
        user = obs[:, -U:]
        f, pop = cand[..., :d], cand[..., d:]
        clicked = hist[..., d:d + 1]
        profile = (hist[..., :d] * clicked).sum(1) / clicked.sum(1).clamp(min=1.0)  # mean clicked features
        x = torch.cat([f, pop, f * profile[:, None], profile[:, None].expand(B, C, d),
                       (f * profile[:, None]).sum(-1, keepdim=True), user[:, None].expand(B, C, U)], dim=-1)
        h = self.item(x)
        scores = self.score(h).squeeze(-1)
        pooled = self.state(torch.cat([h.mean(1), profile, user], dim=-1))
        return torch.cat([scores, pooled], dim=-1)


class _Split(nn.Module):
    """The actor gets the candidate scores as they are; the critic reads the pooled features."""

    def __init__(self, num_candidates: int, hidden: int) -> None:
        super().__init__()
        self.C = num_candidates
        self.latent_dim_pi, self.latent_dim_vf = num_candidates, hidden
        self.vf = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh())

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_actor(features), self.forward_critic(features)

    def forward_actor(self, features: torch.Tensor) -> torch.Tensor:
        return features[:, : self.C]

    def forward_critic(self, features: torch.Tensor) -> torch.Tensor:
        return self.vf(features[:, self.C:])


class SlatePolicy(ActorCriticPolicy):
    """Gaussian PPO policy whose mean is one shared-network score per candidate (no dense head,
    so permuting the candidates permutes the scores)."""

    def __init__(self, *args: Any, num_candidates: int = 50, history_window: int = 10, hidden: int = 64, **kw: Any):
        self._C, self._hidden = num_candidates, hidden
        kw.setdefault("features_extractor_class", SlateScorer)
        kw.setdefault("features_extractor_kwargs", {"num_candidates": num_candidates,
                                                    "history_window": history_window, "hidden": hidden})
        super().__init__(*args, **kw)

    def _build_mlp_extractor(self) -> None:
        self.mlp_extractor = _Split(self._C, self._hidden)

    def _build(self, lr_schedule: Any) -> None:
        super()._build(lr_schedule)
        if isinstance(self.action_space, spaces.MultiDiscrete):  # the same logits at every slate position
            self.action_net = _Tile(int(self.action_space.nvec.size))
        else:  # Box: the scores are the Gaussian means
            self.action_net = nn.Identity()
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)


class _Tile(nn.Module):
    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat(1, self.k)


# -- experiment -----------------------------------------------------------------------------------
def train(args: argparse.Namespace) -> PPO:
    from simrec.envs.sb3 import SB3VecEnv
    from simrec.envs.spec import EnvSpec

    spec = EnvSpec.builtin("synthetic-v0")
    venv = SB3VecEnv.make(ENV_ID, num_envs=args.num_envs, seed=args.seed, action=args.action, flatten=True)
    common: dict[str, Any] = {"n_steps": args.n_steps, "batch_size": args.batch_size, "n_epochs": args.n_epochs,
                              "gamma": 0.95, "learning_rate": args.lr, "ent_coef": 0.0, "seed": args.seed,
                              "device": "cpu", "verbose": 0}
    if args.policy == "slate":
        kw: dict[str, Any] = {"num_candidates": spec.num_candidates, "history_window": spec.history_window}
        if args.action == "scores":
            kw["log_std_init"] = -0.5
        model = PPO(SlatePolicy, venv, policy_kwargs=kw, **common)
    else:
        model = PPO("MlpPolicy", venv, **common)
    t = time.perf_counter()
    model.learn(args.timesteps, progress_bar=args.progress)
    print(f"trained PPO ({args.policy} policy) for {args.timesteps:,} steps in {time.perf_counter() - t:.0f}s")
    return model


def evaluate(model: PPO, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    from gymnasium.wrappers import FlattenObservation

    from simrec.cli import run_recommender
    from simrec.envs.slate_env import SlateEnv
    from simrec.recommenders import SB3Policy, make_recommender
    from simrec.envs.wrappers import RepairSlate, TopKScores

    names = ["random", "popular", "linucb", "ppo"]
    results: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    for seed in args.eval_seeds:
        for name in names:
            env = SlateEnv("synthetic-v0")
            if name == "ppo":  # deterministic: greedy distinct slate (repair) or top-k of the means (scores)
                wrap = TopKScores if args.action == "scores" else RepairSlate
                rec: Any = SB3Policy(model, FlattenObservation(wrap(SlateEnv())), seed=seed)
            else:
                rec = make_recommender(name, env.action_space, seed=seed)
            s, traj = run_recommender(env, rec, args.eval_episodes, seed, None, name=name, progress=False)
            s["return_se"] = float(traj.episodes["return"].std(ddof=1) / np.sqrt(len(traj.episodes)))
            results[name].append(s)
    return {n: {k: float(np.mean([r[k] for r in rs])) for k in rs[0]} for n, rs in results.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--timesteps", type=int, default=300_000)
    p.add_argument("--policy", choices=("slate", "mlp"), default="slate")
    p.add_argument("--action", choices=("repair", "scores"), default="repair",
                   help="repair: a categorical over candidates per slate position, repeats repaired (RepairSlate); "
                        "scores: a Gaussian score per candidate, slate = top-k (TopKScores)")
    p.add_argument("--num-envs", type=int, default=64, help="simulated users in parallel")
    p.add_argument("--n-steps", type=int, default=64, help="rollout length per env")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--n-epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-episodes", type=int, default=200, help="sessions per recommender and seed")
    p.add_argument("--eval-seeds", type=int, nargs="+", default=[100, 101])
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1 is fastest for these small networks)")
    p.add_argument("--save", metavar="ZIP", help="save the trained model (evaluate later with simrec run --policy)")
    p.add_argument("--progress", action="store_true", help="show SB3's progress bar (needs rich)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from simrec.analysis import format_table

    model = train(args)
    if args.save:
        model.save(args.save)
        print(f"saved {args.save}")
    t = time.perf_counter()
    table = evaluate(model, args)
    print(f"\nevaluation: {args.eval_episodes} sessions x seeds {args.eval_seeds} per recommender "
          f"({time.perf_counter() - t:.0f}s; bandits learn online during evaluation, PPO is frozen)\n")
    print(format_table(table, ["ctr", "mean_session_length", "mean_return", "return_se", "catalog_coverage",
                               "intra_list_diversity"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
