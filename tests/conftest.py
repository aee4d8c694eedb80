"""Shared test settings: hypothesis profiles, the ``one_thread`` fixture, and the once-per-process
warning about emulated bfloat16 counted as given.

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


@pytest.fixture(autouse=True, scope="session")
def _emulated_bfloat16_warning_given():
    """The warning that bfloat16 is emulated on this CPU is logged once per process; it counts as given
    from the start, so that which test first fits in bfloat16 does not change what the tests that count
    stderr lines see. Its own tests clear it and leave it given."""
    import logging

    from deepgmm.deep import precision

    log = logging.getLogger(precision.__name__)
    saved = log.disabled
    log.disabled = True
    try:
        precision._warn_emulated()
    finally:
        log.disabled = saved
    yield
