"""Shared test settings: hypothesis profiles, and the ``one_thread`` fixture.

``ci`` (default): few examples, derandomised (the same examples on every run, so CI is not flaky),
no example database written into the checkout. ``long``: many random examples, for a fuzzing
session; select it with ``DEEPGMM_HYPOTHESIS=long`` (see docs/robustness.md)::

    DEEPGMM_HYPOTHESIS=long .venv/bin/python -m pytest tests/test_fuzz.py -q
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
               print_blob=True)
settings.register_profile("ci", max_examples=20, derandomize=True, database=None, **_COMMON)
settings.register_profile("long", max_examples=600, **_COMMON)
settings.load_profile(os.environ.get("DEEPGMM_HYPOTHESIS", "ci"))


@pytest.fixture
def one_thread():
    """One torch thread (fast and reproducible on a shared 2-core machine), restored afterwards.

    Modules that train or predict use it for every test: ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
