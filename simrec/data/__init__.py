"""Real logs: dataset loaders, splits, calibration of a simulated population from the train split, and
the fidelity harness that measures it against the held-out split.

``datasets`` (the loader registry ``LOADERS``, ``load_dataset``, and one import point for this API),
``log`` (``InteractionLog`` and parsing helpers), ``movielens`` (ML-100K/1M, checksummed fetch),
``generic`` (CSV logs with configurable columns), ``split`` (temporal ratio, leave-last-k, random),
``calibration`` (train-only calibration and the on-disk world cache; the ``movielens`` world kind),
``fidelity`` (Agent4Rec/SUBER-style protocols, ``simrec fidelity``). This package may import
``simrec.envs`` and below (the harness steps a ``Simulator``); ``simrec.envs`` reaches calibration only
through the world-builder string in ``simrec.envs.registration``.
"""
