"""The ``simrec`` command line (also ``python -m simrec``).

    simrec demo                          # linucb vs random on the embedded world, logs in runs/demo
    simrec demo --backend llm            # a few LLM-backed sessions on a bundled local model
    simrec run --env simrec/Synthetic-v0 --recommender linucb --episodes 500 --seed 0 --out runs/linucb
    simrec run --recommender ease --fit-episodes 300 --episodes 100 --out runs/ease   # fitted as compare fits it
    simrec envs | simrec world --export DIR | simrec inspect DIR | simrec replay DIR | simrec fidelity ...
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simrec.errors import SimrecError

RECOMMENDER_NAMES = ("random", "popular", "greedy", "egreedy", "linucb")
#: ``simrec run --recommender`` names: the online ones, those fitted on a logging run first (as ``simrec compare``
#: fits them) and the oracle; every entry of ``simrec.recommenders.RECOMMENDERS`` but the LLM ranker.
FITTED_NAMES = ("mostpop", "random-unseen", "itemknn", "als", "bpr", "ease", "sasrec", "multvae", "bad")
RUN_RECOMMENDERS = RECOMMENDER_NAMES + FITTED_NAMES + ("oracle",)
#: Modules a fitted recommender needs beyond simrec's own dependencies (all in the ``zoo`` extra).
FIT_MODULES = {"itemknn": ("implicit",), "als": ("implicit", "threadpoolctl"), "bpr": ("implicit", "threadpoolctl"),
               "sasrec": ("torch",), "multvae": ("torch",)}


class CLIError(SimrecError):
    """A user-facing command-line error (printed without a traceback, exit status 2)."""


# -- helpers --------------------------------------------------------------------------------------
def resolve_env_spec(name: str | None, spec_file: str | None = None) -> Any:
    """An :class:`~simrec.envs.spec.EnvSpec` from ``--spec FILE`` or ``--env`` (a Gymnasium id such as
    ``simrec/Synthetic-v0``, a built-in name such as ``synthetic-v0``, or a JSON path)."""
    from simrec.envs.spec import EnvSpec, builtin_specs

    if spec_file:
        return EnvSpec.load(spec_file)
    name = name or "simrec/Synthetic-v0"
    if name.endswith(".json") or Path(name).is_file():
        return EnvSpec.load(name)
    for builtin in builtin_specs():
        spec = EnvSpec.builtin(builtin)
        if name in (builtin, spec.id, spec.id.split("/", 1)[-1]):
            return spec
    ids = [EnvSpec.builtin(b).id for b in builtin_specs()]
    raise CLIError(f"unknown env {name!r}. Fix: use one of {ids} (see `simrec envs`) or --spec FILE")


def _spec_overrides(args: argparse.Namespace, backend_config: dict[str, Any] | None) -> dict[str, Any]:
    o: dict[str, Any] = {}
    for key in ("slate_size", "max_steps", "num_candidates"):
        v = getattr(args, key, None)
        if v is not None:
            o[key] = v
    if getattr(args, "backend", None):
        o["backend"] = args.backend
    if backend_config:
        o["backend_config"] = backend_config
    if getattr(args, "data_dir", None):  # dataset-backed worlds; absolute so the log's spec stays valid
        o["world"] = {"data_dir": str(Path(args.data_dir).resolve())}
    return o


def llm_endpoint(args: argparse.Namespace) -> contextlib.AbstractContextManager[dict[str, Any] | None]:
    """:func:`simrec.llm.endpoint.llm_endpoint` for the parsed ``--backend/--base-url/--model`` flags."""
    from simrec.llm.endpoint import llm_endpoint as endpoint

    return endpoint(getattr(args, "backend", None), getattr(args, "base_url", None), getattr(args, "model", None))


def make_env(args: argparse.Namespace, backend_config: dict[str, Any] | None = None) -> Any:
    """A :class:`~simrec.envs.slate_env.SlateEnv` for the parsed ``--env/--spec`` and override flags."""
    from simrec.envs.slate_env import SlateEnv

    spec = resolve_env_spec(getattr(args, "env", None), getattr(args, "spec", None))
    overrides = _spec_overrides(args, backend_config)
    if overrides:
        spec = spec.with_overrides(**overrides)
    return SlateEnv(spec)


def run_recommender(env: Any, recommender: Any, episodes: int, seed: int, out: str | Path | None, *,
                    name: str, overwrite: bool = False, progress: bool = True, flush_every: int = 1,
                    metadata: dict[str, Any] | None = None, resume: bool = False) -> tuple[dict[str, float], Any]:
    """Run and record ``episodes`` sessions; returns ``(summary, trajectories)``.

    ``resume`` continues the log in ``out`` (see :class:`~simrec.trajectory.Recorder`): its episodes are
    replayed, not recorded, then the run goes on; a log that holds all ``episodes`` is left as it is."""
    from tqdm.auto import tqdm

    from simrec.analysis import summarize
    from simrec.recommenders import run_episodes
    from simrec.trajectory import Recorder

    rec_env = Recorder(env, out, overwrite=overwrite, flush_every=flush_every, recommender=name, metadata=metadata,
                       resume=resume)
    done = rec_env.resumed_from
    if done > episodes:
        rec_env.close()
        raise CLIError(f"{out} already holds {done} episodes, more than --episodes {episodes}. "
                       f"Fix: pass --episodes {done} or more, or start again with --overwrite.")
    recommender.reset(seed=seed)
    desc = f"{name} (replaying {done})" if 0 < done < episodes else name
    with tqdm(total=episodes, desc=desc, unit="ep", disable=not progress, file=sys.stderr, dynamic_ncols=True) as bar:
        try:
            if done < episodes:  # else the log is complete: nothing to replay
                run_episodes(rec_env, recommender, episodes, seed=seed, progress=bar)
            else:
                bar.update(episodes)
        finally:
            rec_env.close()
    traj = rec_env.trajectories()
    return summarize(traj), traj


def _make_recommender(args: argparse.Namespace, env: Any, name: str) -> Any:
    from simrec.recommenders import make_recommender

    if getattr(args, "policy", None):
        from simrec.recommenders.policy import load_sb3_policy

        return load_sb3_policy(args.policy, args.algo, env)
    return make_recommender(name, env.action_space, seed=args.seed)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=1, default=lambda o: None if isinstance(o, float) and math.isnan(o) else str(o)))


def _clean(d: dict[str, float]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


# -- commands -------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from simrec.analysis import format_summary, format_table

    llm = args.backend == "llm"
    episodes = args.episodes if args.episodes is not None else (3 if llm else 200)
    if llm and args.max_steps is None:
        args.max_steps = 5
    names = [args.recommender] + ([] if llm or args.baseline in (None, "none", args.recommender) else [args.baseline])
    out = Path(args.out)
    summaries: dict[str, dict[str, float]] = {}
    t0 = time.perf_counter()
    with llm_endpoint(args) as backend_config:
        for name in names:
            env = make_env(args, backend_config)
            rec = _make_recommender(args, env, name)
            s, _ = run_recommender(env, rec, episodes, args.seed, out / name, name=name, overwrite=True,
                                   progress=not args.no_progress, metadata={"command": "demo"})
            summaries[name] = s
    spec = resolve_env_spec(args.env, None)
    print(f"\nsimrec demo: {episodes} sessions per recommender on {spec.id} "
          f"({'LLM' if llm else 'embedded'} users), seed {args.seed}, {time.perf_counter() - t0:.1f}s\n")
    if len(summaries) > 1:
        print(format_table(summaries))
        a, b = summaries[names[0]], summaries[names[1]]
        if b.get("ctr"):
            print(f"\n{names[0]} vs {names[1]}: CTR {100 * (a['ctr'] / b['ctr'] - 1):+.1f}%, "
                  f"session length {a['mean_session_length']:.1f} vs {b['mean_session_length']:.1f} steps")
    print()
    print(format_summary(summaries[names[0]], f"{names[0]}:"))
    print("\ntrajectory logs: " + ", ".join(str(out / n) for n in names))
    print(f"inspect with: simrec inspect {out / names[0]}")
    return 0


#: ``simrec run`` flags that shape the trajectory (recorded in the log; ``--resume`` needs the same ones).
#: ``--episodes`` may grow on resume; ``--base-url`` says only where the LLM is served.
RUN_ARGUMENTS = ("env", "spec", "slate_size", "num_candidates", "max_steps", "data_dir", "backend", "model", "seed",
                 "recommender", "policy", "algo")
#: Flags of the fit, recorded (and checked on resume) only for a fitted recommender.
FIT_ARGUMENTS = ("fit_episodes", "fit_policy")


def _is_fitted(args: argparse.Namespace) -> bool:
    return not getattr(args, "policy", None) and args.recommender in FITTED_NAMES


def _run_arguments(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"--" + k.replace("_", "-"): getattr(args, k, None) for k in RUN_ARGUMENTS}
    fitted = _is_fitted(args)  # None otherwise, which also matches logs recorded before these flags existed
    out.update({"--" + k.replace("_", "-"): getattr(args, k, None) if fitted else None for k in FIT_ARGUMENTS})
    if args.policy:  # the policy's content, not only its file name
        import hashlib

        out["--policy"] = {"path": args.policy, "sha256": hashlib.sha256(Path(args.policy).read_bytes()).hexdigest()}
    if args.data_dir:
        out["--data-dir"] = str(Path(args.data_dir).resolve())
    return out


def _check_fit_modules(name: str) -> None:
    """Refuse, before any fit, a recommender whose library is not installed, naming the extra."""
    for module in FIT_MODULES.get(name, ()):
        try:
            importlib.import_module(module)
        except ImportError:
            raise CLIError(f"--recommender {name} needs {module}, which is not installed. Fix: pip install -e "
                           "'.[zoo]' (or pip install 'simrec[zoo]'), or choose a recommender without it, e.g. "
                           "ease or mostpop") from None


def _run_recommender_for(args: argparse.Namespace, env: Any, metadata: dict[str, Any]) -> Any:
    """The recommender of ``simrec run``: an SB3 policy, an online one, the oracle, or a fitted one fitted as
    ``simrec compare`` fits it (:func:`~simrec.evaluation.compare.fit_interactions` on the run's own spec: a
    calibrated world's train split, else ``--fit-episodes`` sessions of ``--fit-policy`` seeded ``--seed``
    + 10000), so the fit, like the run, is a function of the arguments and a resume rebuilds the same model.
    The fit data's size goes into ``metadata["fit"]`` (a resume whose fit differs is then refused)."""
    if args.policy or args.recommender in RECOMMENDER_NAMES:
        return _make_recommender(args, env, args.recommender)
    from simrec.evaluation.compare import build_recommender, fit_interactions

    fit = None
    if _is_fitted(args):
        _check_fit_modules(args.recommender)
        if args.fit_episodes < 1:
            raise CLIError(f"--fit-episodes must be at least 1, got {args.fit_episodes}. Fix: --fit-episodes 300")
        t = time.perf_counter()
        fit = fit_interactions(env.sim_spec, None, args.seed, fit_episodes=args.fit_episodes,
                               fit_policy=args.fit_policy)
        metadata["fit"] = {"data": fit.name, "interactions": len(fit), "users": fit.n_users, "items": fit.n_items}
        if not (args.no_progress or args.json):
            print(f"{args.recommender}: fitting on {len(fit):,} interactions of {fit.n_users} users "
                  f"({time.perf_counter() - t:.1f}s to collect)", file=sys.stderr, flush=True)
    try:
        return build_recommender(args.recommender, env, args.seed, fit)
    except ImportError as e:  # a library FIT_MODULES does not name
        raise CLIError(f"--recommender {args.recommender}: {e}. Fix: pip install -e '.[zoo]'") from None


def cmd_run(args: argparse.Namespace) -> int:
    from simrec.analysis import format_summary
    from simrec.resume import with_llm_cache

    if args.resume and not args.out:
        raise CLIError("--resume continues the trajectory log in --out DIR. Fix: pass --out DIR.")
    if args.resume and args.overwrite:
        raise CLIError("--resume keeps the log in --out and --overwrite replaces it. Fix: pass one of them.")
    name = "sb3:" + Path(args.policy).name if args.policy else args.recommender
    metadata = {"command": "run", "arguments": _run_arguments(args)}
    with llm_endpoint(args) as backend_config:
        if backend_config is not None and args.out:  # LLM calls recorded next to the log: a resume replays them
            backend_config = with_llm_cache(backend_config, args.out)
        env = make_env(args, backend_config)
        rec = _run_recommender_for(args, env, metadata)
        summary, traj = run_recommender(env, rec, args.episodes, args.seed, args.out, name=name,
                                        overwrite=args.overwrite, progress=not args.no_progress,
                                        flush_every=args.flush_every, metadata=metadata, resume=args.resume)
    if args.json:
        _print_json({"recommender": name, "env": traj.manifest["env_id"], "seed": args.seed,
                     "out": args.out, "summary": _clean(summary)})
        return 0
    print(format_summary(summary, f"{name} on {traj.manifest['env_id']} ({args.episodes} sessions, seed {args.seed}):"))
    if args.out:
        print(f"\ntrajectory log: {args.out}")
    return 0


def cmd_envs(args: argparse.Namespace) -> int:
    from simrec.envs.spec import EnvSpec, builtin_specs

    specs = [EnvSpec.builtin(n) for n in builtin_specs()]
    if args.json:
        _print_json({s.id: s.model_dump(mode="json") for s in specs})
        return 0
    for s in specs:
        print(f"{s.id}")
        if s.description:
            print(f"  {s.description}")
        print(f"  world: {s.world.kind}; slate {s.slate_size} of {s.num_candidates} candidates; sessions up to "
              f"{s.max_steps} steps; backend: {s.backend}; reward weights: {s.reward.model_dump()}")
    return 0


def cmd_world(args: argparse.Namespace) -> int:
    from simrec.envs.registration import build_world

    spec = resolve_env_spec(args.env, args.spec)
    if args.data_dir:
        spec = spec.with_overrides(**_spec_overrides(args, None))
    world = build_world(spec.world)
    out = Path(args.export)
    out.mkdir(parents=True, exist_ok=True)
    world.catalog.save(out / "catalog.json")
    world.personas.save(out / "personas.json")
    print(f"wrote {out / 'catalog.json'} ({len(world.catalog)} items, {world.catalog.n_topics} topics) and "
          f"{out / 'personas.json'} ({len(world.personas)} personas) for {spec.id}")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from simrec.data.calibration import WorldCache, default_cache_dir

    root = Path(args.dir) if args.dir else default_cache_dir()
    if root is None:
        print("the calibrated-world cache is off (SIMREC_CACHE_DIR=off)")
        return 0
    store = WorldCache(root)
    entries = store.entries()
    if args.clear:
        print(f"removed {store.clear()} calibrated world(s) from {store.root}")
        return 0
    size = sum(f.stat().st_size for e in entries for f in e.iterdir())
    print(f"{store.root}: {len(entries)} calibrated world(s), {size / 2**20:.1f} MiB")
    for e in entries:
        try:
            meta = json.loads((e / "meta.json").read_text(encoding="utf-8"))
            rep = meta.get("report", {})
            print(f"  {e.name}  {meta.get('created', '?')}  {len(meta.get('user_index', []))} users, "
                  f"{rep.get('train_interactions', '?')} train interactions, calibrated in {rep.get('seconds', '?')}s")
        except (OSError, ValueError) as err:
            print(f"  {e.name}  unreadable ({err}); it is recalibrated on next use")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from simrec.analysis import format_summary, per_user, summarize
    from simrec.trajectory import read_trajectories

    traj = read_trajectories(args.path)
    m = traj.manifest
    summary = summarize(traj)
    users = per_user(traj).sort_values("sessions", ascending=False)
    if args.json:
        _print_json({"manifest": {k: v for k, v in m.items() if k != "spec"}, "summary": _clean(summary),
                     "users": json.loads(users.head(args.users).to_json(orient="records"))})
        return 0
    print(f"{args.path}: {m['env_id']}, recommender {m.get('recommender') or '-'}, backend {m['backend']}, "
          f"seed {m.get('seed')}")
    print(f"  simrec {m['simrec_version']}, schema v{m['schema_version']}, run {m['run_id'][:12]}, "
          f"started {m['created']}, " + (f"closed {m['closed']}" if m.get("closed") else "NOT closed (interrupted?)"))
    incomplete = int((~traj.episodes["complete"]).sum()) if len(traj.episodes) else 0
    print(f"  {len(traj.episodes)} episodes ({incomplete} incomplete), {len(traj.steps)} steps, {len(traj.calls)} LLM calls")
    if m.get("backend_stats"):
        nonzero = {k: v for k, v in m["backend_stats"].items() if v}
        print("  backend stats: " + (", ".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}"
                                               for k, v in nonzero.items()) or "all zero"))
    print()
    print(format_summary(summary, "summary:"))
    if len(users):
        print(f"\ntop {min(args.users, len(users))} users by sessions:")
        print(users.head(args.users).to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    import numpy as np

    from simrec.trajectory import read_trajectories, replay

    traj = read_trajectories(args.path)
    new = replay(traj, path=args.out, overwrite=args.overwrite)
    cols = [c for c in ("episode", "t", "user", "slate", "clicked", "rating", "consumption", "reward",
                        "terminated", "truncated") if c in traj.steps.columns]
    bad = []
    if len(new.steps) != len(traj.steps):
        bad.append(f"step count {len(new.steps)} != {len(traj.steps)}")
    else:
        for c in cols:
            a, b = traj.steps[c].to_numpy(), new.steps[c].to_numpy()
            same = all(np.array_equal(x, y, equal_nan=x.dtype.kind == "f")
                       for x, y in ((np.asarray(x), np.asarray(y)) for x, y in zip(a, b)))
            if not same:
                bad.append(c)
    if bad:
        print(f"replay of {args.path} DIFFERS in: {', '.join(bad)}"
              + (" (LLM backends reproduce only with a replay cache)" if traj.manifest.get("backend") != "embedded" else ""))
        return 1
    print(f"replay of {args.path}: {len(new.episodes)} episodes, {len(new.steps)} steps reproduced exactly"
          + (f"; written to {args.out}" if args.out else ""))
    return 0


#: Commands whose code lives with its subject: ``name -> (module, help)``. Each module has
#: ``add_arguments(parser)`` and ``run_cli(args) -> int`` and is imported only when its command runs.
MODULE_COMMANDS: dict[str, tuple[str, str]] = {
    "fidelity": ("simrec.data.fidelity", "measure simulator fidelity against real ratings (see simrec.data.fidelity)"),
    "compare": ("simrec.evaluation.compare", "run several recommenders on the same users and seeds, one table"),
    "agreement": ("simrec.evaluation.agreement", "do recommenders rank the same in simulation as on real held-out data?"),
    "export-minari": ("simrec.trajectory.export_minari", "export a trajectory log as a Minari dataset (offline RL)"),
    "report": ("simrec.analysis.report", "write a self-contained HTML report of runs or of a result JSON"),
    "stress": ("simrec.stress.runner", "stress tests of recommenders: `simrec stress list`, `simrec stress run NAME`"),
    "synth": ("simrec.data.synthetic", "write a synthetic log (MovieLens-like or long-tail implicit) as a generic log"),
}


def _import_command(name: str) -> Any:
    module = MODULE_COMMANDS[name][0]
    try:  # import_module reads sys.modules, so a substituted module is honoured
        mod = importlib.import_module(module)
    except ImportError as e:
        raise CLIError(f"`simrec {name}` is unavailable: {module} could not be imported ({e}).") from None
    if not hasattr(mod, "add_arguments") or not hasattr(mod, "run_cli"):
        raise CLIError(f"`simrec {name}` is unavailable: {module} has no add_arguments/run_cli.")
    return mod


def cmd_module(args: argparse.Namespace) -> int:
    from simrec.distributed import cli as distributed

    if args.command in distributed.COMMANDS and distributed.requested(args):  # --ray/--workers/--ray-address
        return int(distributed.run_cli(args) or 0)
    return int(_import_command(args.command).run_cli(args) or 0)


# -- parser ---------------------------------------------------------------------------------------
def _add_env_args(p: argparse.ArgumentParser, *, llm: bool = True) -> None:
    p.add_argument("--env", default="simrec/Synthetic-v0",
                   help="env id (simrec/Synthetic-v0), built-in name (synthetic-v0) or spec JSON path")
    p.add_argument("--spec", metavar="FILE", help="custom env spec JSON (overrides --env)")
    p.add_argument("--slate-size", type=int, help="override the spec's slate size")
    p.add_argument("--num-candidates", type=int, help="override the spec's candidates per step")
    p.add_argument("--max-steps", type=int, help="override the spec's session length limit")
    p.add_argument("--data-dir", metavar="DIR", help="dataset directory of a data-backed world (e.g. MovieLens)")
    if llm:
        p.add_argument("--backend", choices=("embedded", "llm"), help="user cognition backend (default: the spec's)")
        p.add_argument("--base-url", help="OpenAI-compatible endpoint for --backend llm (default: a bundled local model)")
        p.add_argument("--model", help="model name for --backend llm")
    p.add_argument("--seed", type=int, default=0, help="seed of the first reset and of the recommender (default 0)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    from simrec.version import __version__

    parser = argparse.ArgumentParser(
        prog="simrec", description="Train and stress-test recommender systems against simulated users.")
    parser.add_argument("--version", action="version", version=f"simrec {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="run a short simulation on the embedded world and write a log",
                       description="Run a recommender against a baseline on the default world, print a "
                                   "comparison and write trajectory logs.")
    _add_env_args(p)
    p.add_argument("--episodes", type=int, help="sessions per recommender (default 200; 3 with --backend llm)")
    p.add_argument("--recommender", choices=RECOMMENDER_NAMES, default="linucb")
    p.add_argument("--baseline", choices=RECOMMENDER_NAMES + ("none",), default="random")
    p.add_argument("--out", default="runs/demo", help="log directory (default runs/demo; one sub-directory per recommender)")
    p.set_defaults(func=cmd_demo, policy=None)

    p = sub.add_parser("run", help="run a recommender for N sessions, print a summary, optionally log",
                       description="Run a recommender (or a trained SB3 policy) and print CTR, rating, session "
                                   "length and coverage.")
    _add_env_args(p)
    p.add_argument("--recommender", choices=RUN_RECOMMENDERS, default="random",
                   help="online, fitted first on logged interactions (" + ", ".join(FITTED_NAMES) + ", as "
                        "`simrec compare` fits them), or the oracle (a cheat: reads the hidden user state)")
    p.add_argument("--data", metavar="DIR", dest="data_dir",
                   help="same as --data-dir (the name `simrec compare` uses): a calibrated world's dataset, "
                        "whose train split is then the fit data")
    p.add_argument("--fit-episodes", type=int, default=300,
                   help="fitted recommenders: sessions of --fit-policy to fit on, synthetic worlds (default 300)")
    p.add_argument("--fit-policy", choices=RECOMMENDER_NAMES, default="random",
                   help="fitted recommenders: the logging policy whose clicks are the fit data (default random)")
    p.add_argument("--policy", metavar="ZIP", help="a saved stable-baselines3 model to evaluate instead")
    p.add_argument("--algo", default="ppo", help="SB3 algorithm class of --policy (default ppo)")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--out", metavar="DIR", help="write the trajectory log here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing log in --out")
    p.add_argument("--resume", action="store_true",
                   help="continue the log in --out after a crash: its episodes are replayed (checked, not "
                        "rewritten) to rebuild the env and recommender state, then the run goes on; "
                        "a new log if there is none")
    p.add_argument("--flush-every", type=int, default=1, help="episodes per Parquet part (default 1)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("envs", help="list the registered environments")
    p.add_argument("--json", action="store_true", help="print the full specs as JSON")
    p.set_defaults(func=cmd_envs)

    p = sub.add_parser("world", help="export an env's catalog and persona pack as JSON")
    p.add_argument("--export", metavar="DIR", required=True, help="write catalog.json and personas.json here")
    p.add_argument("--env", default="simrec/Synthetic-v0")
    p.add_argument("--spec", metavar="FILE")
    p.add_argument("--data-dir", metavar="DIR", help="dataset directory of a data-backed world (e.g. MovieLens)")
    p.set_defaults(func=cmd_world)

    p = sub.add_parser("cache", help="list (or --clear) the on-disk cache of calibrated worlds")
    p.add_argument("--clear", action="store_true", help="remove every cached world")
    p.add_argument("--dir", metavar="DIR", help="cache directory (default: $SIMREC_CACHE_DIR or ~/.cache/simrec)")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("inspect", help="summarise a trajectory log")
    p.add_argument("path", metavar="DIR")
    p.add_argument("--users", type=int, default=5, help="users to list (default 5)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("replay", help="re-run a log's actions on a fresh env and check it reproduces")
    p.add_argument("path", metavar="DIR")
    p.add_argument("--out", metavar="DIR", help="also write the replayed log here")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_replay)

    # each module command's code (and its dependencies) is imported only when that command is used
    argv = list(sys.argv[1:] if argv is None else argv)
    parser.set_defaults(command_error=None)
    for name, (_, help_text) in MODULE_COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(func=cmd_module)
        if argv and argv[0] == name:
            try:
                _import_command(name).add_arguments(p)
                if name in ("compare", "stress", "fidelity"):  # their --ray flags (simrec.distributed.cli)
                    from simrec.distributed.cli import add_arguments as add_distributed_arguments

                    add_distributed_arguments(p, name)
            except CLIError as e:  # reported by main() instead of a confusing usage error
                parser.set_defaults(command_error=e)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``simrec`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    err = parser.get_default("command_error")
    if err is not None:
        print(f"simrec {argv[0]}: error: {err}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (SimrecError, FileExistsError, FileNotFoundError) as e:
        print(f"simrec {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"simrec {args.command}: interrupted (finished episodes are in the log)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `simrec inspect DIR | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
