"""Reproductions of the paper's experiments (Schwab, Mayr & Haltmeier 2024).

* :mod:`~deepgmm.experiments.myops_tables`: the MyoPS 2020 tables, :func:`run_table1`
  (single-image optimisation) and :func:`run_table2` (trained networks), and the ``deepgmm myops``
  command (:func:`add_parser`).

The heavy modules (torch, the data loader, matplotlib) are imported when a table runs, so importing
this package (and ``deepgmm --help``) stays fast.
"""

from .myops_tables import TableResult, add_parser, compute_mu_data, run_table1, run_table2

__all__ = ["TableResult", "add_parser", "compute_mu_data", "run_table1", "run_table2"]
