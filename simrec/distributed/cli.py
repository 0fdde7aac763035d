"""``--ray`` for ``simrec compare``, ``simrec stress run`` and ``simrec fidelity``: the same command, its units
on Ray workers.

    simrec compare --recommenders random,popular,ease --seeds 4 --out runs/cmp --ray --workers 2
    simrec stress run filter_bubble --seeds 6 --ray --ray-address auto
    simrec fidelity --data ../shared/datasets/ml-100k --seeds 5 --ray --workers 2

``simrec.cli`` adds these flags to the three commands (:func:`add_arguments`) and hands a parsed command with
any of them to :func:`run_cli`, which prints what the command prints. ``simrec compare --out DIR --ray``
writes one merged, verified trajectory log to ``DIR`` (see :mod:`simrec.distributed.merge`) instead of one
log per run.

Surviving a crash of the driver: ``--resume`` (and ``simrec fidelity --journal``) work with ``--ray`` as without
it, with the same journal (:class:`simrec.resume.Journal`: ``DIR/journal`` of ``simrec compare --out DIR``,
``OUT/NAME/journal`` of ``simrec stress run``, the ``--journal`` directory of ``simrec fidelity``):

    simrec compare --recommenders random,popular --seeds 4 --out runs/cmp --ray      # killed halfway
    simrec compare --recommenders random,popular --seeds 4 --out runs/cmp --ray --resume

The driver journals each unit's result as soon as its worker returns it; a rerun with ``--resume`` dispatches
only the units the journal lacks, says ``resumed N of M units``, and prints (and writes: ``--json``, the merged
log of ``compare --out``) what an uninterrupted run with the same arguments would. The journal is the one the
command keeps without ``--ray`` (same fingerprint, unit names and entries), so a run started without ``--ray``
can be resumed with it and the other way round; ``--ray``, ``--workers`` and ``--ray-address`` are not part of
the fingerprint. ``compare --out --ray`` keeps each journaled run's log in ``DIR/<recommender>/seed<s>`` (where
the single-process command writes it) besides the merged log, and merges from there on resume. Ray itself
re-runs a unit whose worker died; the journal covers the driver.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from simrec.errors import ConfigError

COMMANDS = ("compare", "stress", "fidelity")


def add_arguments(p: argparse.ArgumentParser, command: str) -> None:
    """Add ``--ray``, ``--workers`` and ``--ray-address`` to ``command``'s parser (``stress``: to ``stress run``)."""
    target = _subparser(p, "run") if command == "stress" else p
    g = target.add_argument_group("distributed (Ray; see simrec.distributed)")
    g.add_argument("--ray", action="store_true",
                   help="run the units (recommender x seed; stress and fidelity: seeds) as Ray tasks; with "
                        "--resume, only those the journal lacks (each unit is journaled as its worker returns it)")
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="units in flight at once (implies --ray; default: every CPU of the Ray cluster)")
    g.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="join this Ray cluster, e.g. auto or ray://HEAD:10001 (implies --ray; default: start one here)")


def _subparser(p: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in p._actions:  # argparse keeps sub-commands in a _SubParsersAction; there is no public accessor
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            return action.choices[name]
    raise LookupError(f"no sub-command {name!r}")


def requested(args: argparse.Namespace) -> bool:
    """Whether the parsed command asked for a distributed run."""
    return bool(getattr(args, "ray", False) or getattr(args, "workers", None) or getattr(args, "ray_address", None))


def run_cli(args: argparse.Namespace) -> int:
    """Run the parsed ``simrec compare`` / ``simrec stress run`` / ``simrec fidelity`` command on Ray."""
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    if args.command == "compare":
        return _compare(args)
    if args.command == "stress":
        return _stress(args)
    if args.command == "fidelity":
        return _fidelity(args)
    raise ConfigError(f"`simrec {args.command}` has no distributed mode; --ray works with {', '.join(COMMANDS)}")


def _executor(args: argparse.Namespace) -> dict[str, Any]:
    return {"executor": "ray", "workers": args.workers, "ray_address": args.ray_address}


def _say(s: str) -> None:
    print(s, file=sys.stderr, flush=True)


def _compare(args: argparse.Namespace) -> int:
    import dataclasses

    from simrec.distributed.grid import run_grid
    from simrec.evaluation import compare as cmp
    from simrec.llm.endpoint import llm_endpoint
    from simrec.resume import Journal, with_llm_cache

    if args.list:
        return cmp.run_cli(args)
    names, overrides = cmp.cli_recommenders_and_overrides(args)
    if args.resume and not args.out:
        raise ConfigError("--resume reuses the runs journaled in --out DIR. Fix: pass --out DIR.")
    # the journal of `simrec compare --out` without --ray: the same directory, fingerprint and entries
    journal = Journal(Path(args.out) / "journal", cmp._fingerprint(args, overrides), resume=args.resume,
                      command="compare") if args.out else None
    with llm_endpoint("llm" if "llm" in names else None, args.base_url, args.model) as llm_config:
        if llm_config is not None and journal is not None:  # the LLM ranker's calls, replayed on resume
            llm_config = with_llm_cache(llm_config, journal.path)
        # like `simrec compare --out`, a rerun replaces the log it wrote before
        result = run_grid(args.env, names, seeds=list(range(args.seeds)), episodes=args.episodes, overrides=overrides,
                          fit_episodes=args.fit_episodes, fit_policy=args.fit_policy, out=args.out,
                          policy=args.policy, llm_config=llm_config, overwrite=True, progress=not args.no_progress,
                          journal=journal, log=_say, **_executor(args))
    result = dataclasses.replace(result, ci=args.ci, replicates=args.replicates, bootstrap_seed=args.bootstrap_seed)
    print(result.markdown())
    t, d = result.info["timing"], result.info["distributed"]
    print(f"\n{args.env}: {len(names)} recommenders x {args.seeds} seeds x {args.episodes} sessions, "
          f"{result.describe_ci()}; {t['total_s']:.0f}s on {d['workers']} Ray workers"
          + (f" ({len(d['resumed'])} runs resumed from {journal.path})" if journal and d["resumed"] else "")
          + (f"; merged log in {d['log']}" if d["log"] else ""), file=sys.stderr)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=1, default=float) + "\n", encoding="utf-8")
    return 0


def _stress(args: argparse.Namespace) -> int:
    from simrec.distributed.grid import run_stress
    from simrec.resume import Journal
    from simrec.stress import get_stress_test
    from simrec.stress.runner import _fingerprint, cli_configs, write_suite

    summary: dict[str, Any] = {}
    t0 = time.perf_counter()
    # one endpoint for every worker (the bundled model listens on 127.0.0.1: single-machine clusters only)
    with cli_configs(args) as configs:
        for name, cfg in configs:
            t = time.perf_counter()
            # the journal of `simrec stress run` without --ray: OUT/NAME/journal, same fingerprint and entries
            journal = Journal(Path(cfg.out) / "journal", _fingerprint(get_stress_test(name)(cfg), args),
                              resume=args.resume, command="stress run")
            res = run_stress(name, cfg, journal=journal, log=_say, **_executor(args))
            print(f"\n## {name}: {res.question}\n\n{res.markdown()}\n")
            summary[name] = {"seconds": round(time.perf_counter() - t, 1), "out": str(cfg.out),
                             "workers": res.info["distributed"]["workers"]}
            print(f"({summary[name]['seconds']:.0f}s on {summary[name]['workers']} Ray workers; JSON and plots in "
                  f"{cfg.out})", file=sys.stderr)
    write_suite(args, summary, t0)
    return 0


def _fidelity(args: argparse.Namespace) -> int:
    import contextlib

    from simrec.data import fidelity
    from simrec.distributed.grid import run_fidelity_seeds

    spec, cfg = fidelity.cli_spec_and_config(args)
    if "llm" in (args.backend or []) and not args.base_url:
        raise ConfigError("--backend llm with --ray needs a server every worker can reach. Fix: pass --base-url "
                          "(the bundled local model listens on this machine only) or drop --ray.")
    # the journal of `simrec fidelity --journal/--resume` without --ray: the Ray flags are fingerprinted as a
    # run without them has them (they say where seeds run, not what they give), so either may resume the other
    plain = argparse.Namespace(**{**vars(args), "ray": False, "workers": None, "ray_address": None})
    journal = fidelity._journal(plain)
    say = (lambda s: None) if args.quiet else _say
    with contextlib.ExitStack() as stack:
        factories = fidelity.cli_backends(args, stack, journal)
        result = run_fidelity_seeds(spec, factories, cfg, baselines=not args.no_baselines,
                                    progress=not args.quiet, journal=journal, log=say, **_executor(args))
    return fidelity.cli_report(result, args)
