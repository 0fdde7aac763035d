"""Questions about recommenders, answered in simulation: comparisons, sim-to-real agreement,
counterfactual controls, and the statistics they report.

``stats`` (t intervals, Kendall tau-b, bootstrap), ``compare`` (``simrec compare``: many recommenders on the
same users and seeds), ``agreement`` (``simrec agreement``: offline metrics on the real held-out split
against simulated ones), ``counterfactual`` (slate dilution, activity injection). This package may import
``simrec.analysis``, ``simrec.recommenders`` and below; stress tests and the CLI build on it.
"""
