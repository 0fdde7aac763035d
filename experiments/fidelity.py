"""Fidelity of simrec's simulated users against held-out MovieLens behaviour (the README table).

    python experiments/fidelity.py                                   # embedded backend, ML-100K, 5 seeds
    python experiments/fidelity.py --backend embedded --backend llm \\
        --base-url http://127.0.0.1:8000/v1 --model my-model --max-users 100 --max-positives 10
    python experiments/fidelity.py --data path/to/ml-1m --variant ml-1m

Same options as ``simrec fidelity`` (see ``simrec.data.fidelity``); results go to
``runs/fidelity/fidelity.json`` and ``runs/fidelity/fidelity.md`` unless ``--json``/``--markdown``
say otherwise. Protocols, baselines and metric definitions are in the ``simrec.data.fidelity`` docstring.
"""

from __future__ import annotations

import sys

from simrec.data.fidelity import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--json" not in argv:
        argv += ["--json", "runs/fidelity/fidelity.json"]
    if "--markdown" not in argv:
        argv += ["--markdown", "runs/fidelity/fidelity.md"]
    raise SystemExit(main(argv))
