"""Reproductions of the paper's experiments (Schwab, Mayr & Haltmeier 2024), as configurations of
two runners that share resume, lock, worker processes, ``results.json``, ``table.md`` and figures:

* :mod:`~deepgmm.experiments.fit_runner`: fit every case of a data set with each method, score it;
* :mod:`~deepgmm.experiments.train_runner`: train networks on some cases, test on others;
* :mod:`~deepgmm.experiments.cases`: what a data set provides (:class:`~.cases.Case`, :class:`~.cases.DataSet`);
* :mod:`~deepgmm.experiments.myops`: the MyoPS 2020 tables, :func:`run_table1` and :func:`run_table2`.
* :mod:`~deepgmm.experiments.brain`: CSF, GM and WM of T1 volumes (IBSR18, BrainWeb).
* :mod:`~deepgmm.experiments.bsds`: BSDS500 photographs scored with region metrics
  (:mod:`~deepgmm.experiments.regions`), with the peers of :mod:`~deepgmm.experiments.bsds_peers`.

The ``deepgmm myops``, ``deepgmm brain`` and ``deepgmm bsds`` commands live in the CLI layer; importing this package imports torch.
"""

from ._run import TableResult
from .myops import compute_mu_data, run_table1, run_table2

__all__ = ["TableResult", "compute_mu_data", "run_table1", "run_table2"]
