"""Analysis of trajectory logs: summary metrics, per-user tables and their terminal rendering.

``summary`` (``summarize``, ``per_user``, diversity and novelty, ``format_summary`` / ``format_table``).
This package may import ``simrec.recommenders``, ``simrec.trajectory`` and below.
"""

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
           "format_summary", "format_table"]
