"""Training and validation data: sources, an on-disk decode cache, the patch sampler, prefetch.

    train, val = get_datasets(config.data, scale, patch_size=48)     # sources.py, cache.py
    batch = batch_at(train, step, seed=0, global_batch_size=16, ...)  # sampler.py
    for batch in train_iterator(train, start_step=0, ...): ...        # prefetch.py
"""

from maffsrn_jax.data.cache import DataError, DataWarning, default_cache_dir
from maffsrn_jax.data.prefetch import train_iterator
from maffsrn_jax.data.sampler import PairDataset, batch_at
from maffsrn_jax.data.sources import (
    EMBEDDED_TRAIN,
    EMBEDDED_VAL,
    SOURCES,
    PairFiles,
    detect_source,
    get_datasets,
)

__all__ = [
    "EMBEDDED_TRAIN",
    "EMBEDDED_VAL",
    "SOURCES",
    "DataError",
    "DataWarning",
    "PairDataset",
    "PairFiles",
    "batch_at",
    "default_cache_dir",
    "detect_source",
    "get_datasets",
    "train_iterator",
]
