"""Real logs: dataset loaders, the temporal/random split, calibration of a simulated population from the
train split, and the fidelity harness that measures it against the held-out split.

``datasets`` (MovieLens-100K/1M and generic CSV loaders, ``InteractionLog``, splits, checksummed fetch),
``calibration`` (train-only calibration and the on-disk world cache; the ``movielens`` world kind),
``fidelity`` (Agent4Rec/SUBER-style protocols, ``simrec fidelity``). This package may import
``simrec.envs`` and below (the harness steps a ``Simulator``); ``simrec.envs`` reaches calibration only
through the world-builder string in ``simrec.envs.registration``.
"""
