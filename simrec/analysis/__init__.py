"""Analysis of trajectory logs: summary metrics, exposure, plots and self-contained HTML reports.

``summary`` (``summarize``, ``per_user``, diversity and novelty, terminal tables), ``exposure`` (exposure
counts, Gini, Lorenz curve, topic entropy over time), ``plots`` (matplotlib figures; the ``report`` extra),
``report`` (``simrec report``: one HTML file with embedded PNGs). This package may import
``simrec.recommenders``, ``simrec.trajectory`` and below.
"""

from simrec.analysis.exposure import exposure_counts, gini, lorenz_curve, topic_entropy_over_time
from simrec.analysis.report import render_json_report, render_report
from simrec.analysis.summary import (
    call_stats,
    format_summary,
    format_table,
    intra_list_diversity,
    load_catalog,
    novelty,
    per_user,
    summarize,
)

__all__ = ["summarize", "per_user", "intra_list_diversity", "novelty", "call_stats", "load_catalog",
           "format_summary", "format_table", "exposure_counts", "gini", "lorenz_curve", "topic_entropy_over_time",
           "render_report", "render_json_report"]
