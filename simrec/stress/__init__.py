"""Stress tests for recommenders: seeded studies that answer one question each (does it recover from a
preference shift, trap users in a bubble, amplify popularity, ...), run on the same simulated users for
every recommender, with JSON, plots and a table.

``base`` (:class:`StressTest`, :class:`StressConfig`, :class:`StressResult`), ``runner`` (``simrec stress
list|run``), one module per test, registered in :data:`STRESS_TESTS`. This package may import
``simrec.evaluation``, ``simrec.analysis`` and below.
"""

from __future__ import annotations

import importlib
from typing import Any

from simrec.errors import ConfigError
from simrec.stress.base import StressConfig, StressResult, StressTest

#: Test name -> ``"module:Class"`` (imported on use, so listing the tests imports none of them).
STRESS_TESTS: dict[str, str] = {
    "preference_shift": "simrec.stress.preference_shift:PreferenceShift",
    "filter_bubble": "simrec.stress.filter_bubble:FilterBubble",
    "popularity_bias": "simrec.stress.popularity_bias:PopularityBias",
    "fatigue_retention": "simrec.stress.fatigue_retention:FatigueRetention",
    "position_bias": "simrec.stress.position_bias:PositionBias",
    "leakage": "simrec.stress.leakage:LeakageInflation",
    "cold_start": "simrec.stress.cold_start:ColdStart",
    "shilling": "simrec.stress.shilling:Shilling",
}


def get_stress_test(name: str) -> type[StressTest]:
    """The stress-test class registered as ``name``."""
    target = STRESS_TESTS.get(name)
    if target is None:
        raise ConfigError(f"unknown stress test {name!r}. Fix: use one of {sorted(STRESS_TESTS)} (simrec stress list)")
    mod, cls = target.split(":")
    return getattr(importlib.import_module(mod), cls)


def run_stress_test(name: str, config: StressConfig | dict[str, Any] | None = None) -> StressResult:
    """Run one registered stress test with ``config``."""
    return get_stress_test(name)(config).run()


__all__ = ["STRESS_TESTS", "StressConfig", "StressResult", "StressTest", "get_stress_test", "run_stress_test"]
