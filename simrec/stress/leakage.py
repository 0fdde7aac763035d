"""Leakage inflation: how much do leaked targets and real titles inflate an LLM-user evaluation?

The evaluation is the fidelity harness's discrimination protocol (:mod:`simrec.data.fidelity`): an LLM user
judges a page holding some of their held-out (target) items and as many unobserved ones, and the metric is
how well its "would watch" separates the two. On MovieLens-100K (``../shared/datasets/ml-100k``, the
``simrec/MovieLens-v0`` world) the targets are each user's test-split items; without the dataset the test
says so and runs on the synthetic world, where each user's targets are the items the embedded model says
they like best ("designated targets") and the negatives come from the half they like least.

Both arms run the same leaky pipeline: the prompt also tells the user which items they "watched later" (the
target list, real titles, as published LLM simulators leak a user's full history into the profile). The
arms differ only in the sanitiser (rows ``sanitised`` and ``leaky``; ``inflation`` is leaky - sanitised,
paired by seed):

* ``sanitised``: pages in pseudonym titles; the whole prompt audited in redact mode with the user's
  targets held out, so the leaked titles are redacted.
* ``leaky``: pages in real titles; the prompt audited in ``off`` mode (counted, never redacted), so the
  model can match the leaked titles against the page and use what it knows about real films.

The page is rendered by one sanitiser and the prompt audited by a second one that holds the targets out:
the LLM backend's own held-out protection withholds a target wherever it appears, pages included (right
for a ranker, which must not see the targets at all), which would turn every target on a judged page into a
``[redacted]`` marker. The auditor names items by real title, so the targets' page pseudonyms, which the
user has to see, are not themselves forbidden.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import gymnasium
import numpy as np

from simrec.cognition.embedded import EmbeddedCognition
from simrec.cognition.llm import judge_schema
from simrec.data.calibration import movielens_settings
from simrec.data.fidelity import FidelityConfig, build_eval_set
from simrec.envs.registration import build_world
from simrec.envs.spec import resolve_spec
from simrec.errors import ConfigError
from simrec.evaluation.compare import make_env
from simrec.llm.cache import open_cache
from simrec.llm.client import AsyncRunner, Completion, LLMCallError, LLMClient, LLMConfig, PriceTable
from simrec.llm.prompting import JudgeReply, build_judge_messages, judge_to_arrays
from simrec.llm.sanitize import VIOLATION_KINDS, AuditResult, Sanitizer, display_title
from simrec.stress.llm_users import LLMUsersTest

MOVIELENS_ENV = "simrec/MovieLens-v0"
#: Sanitiser settings of each arm: how the page names items, and the audit mode of the whole prompt.
ARMS: dict[str, dict[str, str]] = {"sanitised": {"titles": "pseudonym", "mode": "redact"},
                                   "leaky": {"titles": "real", "mode": "off"}}
ROWS = (*ARMS, "inflation")
SCORES = ("acc", "hit_rate", "false_watch")


@dataclass
class JudgeTask:
    """One user's page: catalog items in page order, which of them are targets."""

    user: int
    items: np.ndarray
    target: np.ndarray

    @property
    def targets(self) -> list[int]:
        return [int(i) for i in self.items[self.target]]


def movielens_tasks(env: Any, seed: int, users: int, targets: int) -> list[JudgeTask]:
    """Pages of ``users`` random test users: up to ``targets`` test items each and as many unobserved items
    (the fidelity harness's evaluation set at 1:1), shuffled."""
    world = build_world(env.sim_spec.world)  # the env's own (cached) world
    ev = build_eval_set(world, FidelityConfig(seeds=[seed], ratios=[1], max_users=users, max_positives=targets),
                        np.random.default_rng([seed, 43]))
    nu, ni = ev.negatives[1]
    rng = np.random.default_rng([seed, 47])
    tasks = []
    for u in ev.users:
        items = np.concatenate([ev.pos_item[ev.pos_user == u], ni[nu == u]])
        target = np.arange(items.size) < int((ev.pos_user == u).sum())
        order = rng.permutation(items.size)
        tasks.append(JudgeTask(int(u), items[order], target[order]))
    return tasks


def designated_tasks(env: Any, seed: int, users: int, targets: int) -> list[JudgeTask]:
    """Synthetic-world pages: each user's ``targets`` best items under the embedded model, and as many drawn
    from the half of the catalog they like least, shuffled."""
    pop = env.sim.pop
    n_items = len(pop.catalog)
    rng = np.random.default_rng([seed, 43])
    w = pop.session_rate
    chosen = rng.choice(pop.n_users, size=min(users, pop.n_users), replace=False, p=w / w.sum())
    util = EmbeddedCognition(env.sim_spec.choice).utilities(pop, chosen, np.tile(np.arange(n_items), (chosen.size, 1)))
    tasks = []
    for u, row in zip(chosen, util):
        rank = np.argsort(-row)
        items = np.concatenate([rank[:targets], rng.choice(rank[n_items // 2:], size=targets, replace=False)])
        order = rng.permutation(items.size)
        tasks.append(JudgeTask(int(u), items[order], (np.arange(items.size) < targets)[order]))
    return tasks


def leak_line(catalog: Any, items: Sequence[int]) -> str:
    """The leak: the user's targets, by real title, as things they watched later."""
    return "Later you watched: " + ", ".join(f'"{display_title(catalog.titles[int(i)])}"' for i in items) + "."


def judge_prompt(pop: Any, task: JudgeTask, page: Sanitizer, audit: Sanitizer) -> tuple[list[dict], AuditResult]:
    """The judge prompt for ``task``: rendered with ``page``, the leak line before the page, then audited by
    ``audit`` with the task's targets held out."""
    msgs = build_judge_messages(pop, task.user, task.items.tolist(), page)
    lines = msgs[1]["content"].split("\n")
    lines.insert(lines.index("Titles:"), leak_line(pop.catalog, task.targets))
    msgs[1]["content"] = "\n".join(lines)
    audit.set_held_out(task.targets)
    return audit.enforce(msgs, user_id=pop.user_id(task.user))


def _recorded(client: LLMClient, messages: list[dict], schema: dict, max_tokens: int) -> Completion | None:
    """The cached reply under whichever response format the recording run negotiated: a new client starts at
    ``json_schema``, and without this its first request would go to the server just to learn the format."""
    if client.cache is not None and client.config.structured == "auto":
        for mode in ("json_schema", "json_object", "none"):
            if client.cache.get(client.cache.key(client.request(messages, "judgement", schema, max_tokens, mode))):
                client.mode = mode
                break
    return client.complete_cached(messages, "judgement", schema, max_tokens)


def ask_judgements(config: dict[str, Any], prompts: Sequence[list[dict]], sizes: Sequence[int]
                   ) -> list[np.ndarray | None]:
    """Each prompt's "would watch" per page item (None where the call or its reply failed). Requests run
    concurrently; cached replies are served without the server."""
    cfg = LLMConfig.resolve(config)
    client = LLMClient(cfg, open_cache(cfg.cache_path, cfg.effective_cache_mode), PriceTable(cfg.prices))
    schemas = [judge_schema(k, cfg.effective_schema_style, cfg.reason_max_chars) for k in sizes]

    replies: list[Completion | BaseException | None] = []
    for p, s in zip(prompts, schemas):
        try:
            replies.append(_recorded(client, p, s, cfg.judge_max_tokens))
        except LLMCallError as e:  # a failure recorded in a replay-only cache fails the same way again
            replies.append(e)
    runner = AsyncRunner()
    try:
        missing = [i for i, r in enumerate(replies) if r is None]
        if missing:
            async def ask_all() -> list[Completion | BaseException]:
                return await asyncio.gather(*(client.complete(prompts[i], "judgement", schemas[i],
                                                              cfg.judge_max_tokens) for i in missing),
                                            return_exceptions=True)

            for i, r in zip(missing, runner.run(ask_all())):
                if isinstance(r, BaseException) and not isinstance(r, LLMCallError):
                    raise r  # a misconfiguration (bad key, replay miss): no fallback should hide it
                replies[i] = r
        runner.run(client.aclose())
    finally:
        runner.close()
        client.flush()
        if client.cache is not None:
            client.cache.close()
    out: list[np.ndarray | None] = []
    for r, k in zip(replies, sizes):
        watch = None  # a failed call or an invalid reply: that page is left out
        if isinstance(r, Completion) and r.content is not None:
            try:
                watch = judge_to_arrays(JudgeReply.model_validate_json(r.content.strip()), k)[0]
            except ValueError:  # pydantic's ValidationError (invalid JSON included) is a ValueError
                pass
        out.append(watch)
    return out


def judge_scores(tasks: Sequence[JudgeTask], watch: Sequence[np.ndarray | None]) -> dict[str, float]:
    """``acc`` (share of page items judged right: target -> watch), ``hit_rate`` (targets judged "watch"),
    ``false_watch`` (non-targets judged "watch"), each averaged over users; pages that failed are left out."""
    acc, hit, false = [], [], []
    for t, w in zip(tasks, watch):
        if w is None:
            continue
        acc.append(float((w == t.target).mean()))
        hit.append(float(w[t.target].mean()) if t.target.any() else np.nan)
        false.append(float(w[~t.target].mean()) if (~t.target).any() else np.nan)
    return {"acc": _mean(acc), "hit_rate": _mean(hit), "false_watch": _mean(false)}


def _mean(x: list[float]) -> float:
    a = np.asarray(x, dtype=np.float64)
    return float(a[np.isfinite(a)].mean()) if np.isfinite(a).any() else float("nan")


class LeakageInflation(LLMUsersTest):
    name: ClassVar[str] = "leakage"
    targets: ClassVar[int] = 2
    default_episodes: ClassVar[int] = 4
    question: ClassVar[str] = ("How much do leaked targets and real titles inflate an LLM-user evaluation "
                               "(sanitiser on vs off)?")
    protocol: ClassVar[str] = (
        f"Per seed, `episodes` users (MovieLens-100K test users if ../shared/datasets/ml-100k is there, else "
        f"synthetic users with designated targets) each judge one page of up to {targets} held-out targets and as "
        "many negatives (the fidelity harness's discrimination protocol, 1:1), with the target list leaked into "
        "the prompt as titles they 'watched later'. Arm sanitised: pseudonym titles, prompt redacted with the "
        "targets held out; arm leaky: real titles, sanitiser off (audit only). Same users, pages and model for "
        "both; LLM calls cached.")
    metric: ClassVar[str] = (
        "acc (page items judged right, per user), hit_rate (targets judged 'would watch'), false_watch "
        "(negatives judged 'would watch'); inflation = leaky - sanitised, per seed. Audit counts per run, by "
        "violation kind, of what each arm's prompt sanitiser found (held_out_title: a target's real title; in the "
        "leaky arm this includes the page itself), redactions made, and failures (pages without a valid reply)")
    default_recommenders: ClassVar[tuple[str, ...]] = ROWS
    higher_is_better: ClassVar[dict[str, bool]] = {}  # inflation is the finding; neither arm is "better"
    #: The data-backed env used when its data is found and the configured env is synthetic (None: never).
    data_env: ClassVar[str | None] = MOVIELENS_ENV
    _said_world: bool = False

    def _env(self) -> Any:
        """The configured env if it is data-backed, else MovieLens-100K if found, else the configured one."""
        env = make_env(self.config.env, self.config.overrides)
        if env.sim_spec.world.kind == "movielens" or self.data_env is None:
            return env
        # the data env's directory, read from its spec without building (calibrating) its world
        data = Path(movielens_settings(resolve_spec(gymnasium.spec(self.data_env).kwargs["spec"]).world).data_dir)
        if data.is_dir():
            env.close()
            return make_env(self.data_env)
        if not self._said_world:
            print(f"leakage: MovieLens-100K not found at {data} ({data.resolve()}); running on {self.config.env} "
                  "with designated targets instead (no real-title knowledge to leak)", file=sys.stderr)
            self._said_world = True
        return env

    def judge_tasks(self, seed: int) -> tuple[Any, list[JudgeTask]]:
        """The env (population reset for ``seed``) and the seed's pages; the same for both arms."""
        env = self._env()
        env.sim.reset_population(np.random.default_rng([seed, 41]))
        draw = movielens_tasks if env.sim_spec.world.kind == "movielens" else designated_tasks
        return env, draw(env, seed, self.episodes, self.targets)

    def run_seed(self, seed: int, recommenders: Sequence[str]) -> tuple[dict[str, dict[str, float]],
                                                                        dict[str, dict[str, list[float]]]]:
        bad = [r for r in recommenders if r not in ROWS]
        if bad:
            raise ConfigError(f"leakage rows are sanitiser arms; got {bad}. Fix: --recommenders {','.join(ROWS)}")
        arms = list(ARMS) if "inflation" in recommenders else [r for r in ARMS if r in recommenders]
        env, tasks = self.judge_tasks(seed)
        pop = env.sim.pop
        prompts: list[list[dict]] = []
        audits: dict[str, dict[str, int]] = {}
        for arm in arms:
            page = Sanitizer.for_population(pop, {"titles": ARMS[arm]["titles"], "mode": "redact"})
            audit = Sanitizer.for_population(pop, {"titles": "real", "mode": ARMS[arm]["mode"]})
            prompts += [judge_prompt(pop, t, page, audit)[0] for t in tasks]
            audits[arm] = dict(audit.counts)
        watch = ask_judgements(self.llm_config(), prompts, [t.items.size for t in tasks] * len(arms))
        metrics: dict[str, dict[str, float]] = {}
        for j, arm in enumerate(arms):
            got = watch[j * len(tasks):(j + 1) * len(tasks)]
            row: dict[str, float] = judge_scores(tasks, got)
            row.update({k: float(audits[arm][f"violations_{k}"]) for k in VIOLATION_KINDS})
            row["redactions"] = float(audits[arm]["redactions"])
            row["failures"] = float(sum(w is None for w in got))
            metrics[arm] = row
        if "inflation" in recommenders:
            keys = list(metrics[arms[0]])
            metrics["inflation"] = {k: metrics["leaky"][k] - metrics["sanitised"][k] if k in SCORES else float("nan")
                                    for k in keys}
        env.close()
        return {r: metrics[r] for r in recommenders}, {}
