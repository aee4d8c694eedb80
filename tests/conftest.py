"""Shared test settings: hypothesis profiles.

``ci`` (default): few examples, derandomised (the same examples on every run, so CI is not flaky),
no example database written into the checkout. ``long``: many random examples, for a fuzzing
session; select it with ``DEEPGMM_HYPOTHESIS=long`` (see docs/robustness.md)::

    DEEPGMM_HYPOTHESIS=long .venv/bin/python -m pytest tests/test_fuzz.py -q
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
               print_blob=True)
settings.register_profile("ci", max_examples=20, derandomize=True, database=None, **_COMMON)
settings.register_profile("long", max_examples=600, **_COMMON)
settings.load_profile(os.environ.get("DEEPGMM_HYPOTHESIS", "ci"))
