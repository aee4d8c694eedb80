"""Training one deepG/deepSVG network on a cohort (the paper's Algorithm 4) and predicting with it.

* :mod:`~deepgmm.training.data`: cohort datasets (folder layout, MyoPS), lazily loaded;
* :mod:`~deepgmm.training.augment`: vectorised augmentation, reproducible per sample;
* :mod:`~deepgmm.training.config`: :class:`TrainConfig`, saved as ``config.json``;
* :mod:`~deepgmm.training.checkpoint`: atomic, verified checkpoints;
* :mod:`~deepgmm.training.train`: :func:`train` (one process or DDP under torchrun);
* :mod:`~deepgmm.training.predict`: :func:`load_model` -> ``.predict(image, mask)``;
* :mod:`~deepgmm.training.cohort`: per-image methods over a cohort, sharded over torchrun ranks;
* :mod:`~deepgmm.training.distributed`: the torchrun helpers.
"""

from ..io import load_mu_data
from .augment import augment_batch, sample_seed
from .checkpoint import load_checkpoint, save_checkpoint
from .config import FORMAT_VERSION, AugmentConfig, TrainConfig
from .data import (
    CohortDataset,
    FolderDataset,
    MyoPSDataset,
    find_folder_cases,
    make_dataset,
)
from .predict import EnsembleModel, TrainedModel, load_ensemble, load_model
from .train import TrainResult, train

__all__ = [
    "augment_batch", "sample_seed", "load_checkpoint", "save_checkpoint", "FORMAT_VERSION", "AugmentConfig",
    "TrainConfig", "load_mu_data", "CohortDataset", "FolderDataset", "MyoPSDataset", "find_folder_cases",
    "make_dataset", "TrainedModel", "EnsembleModel", "load_model", "load_ensemble", "TrainResult",
    "train",
]
