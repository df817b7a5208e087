"""Data: sources (.npy folders, HDF5 files) packed into Zarr stores, windows sampled, batches loaded.

``EpisodeWriter`` is the Python API for writing a store from any other source, episode by episode
(``jepa_fast/data/episodes.py``); the rest is used through ``jepa-fast pack`` and the trainer.
"""

from jepa_fast.data.episodes import EpisodeWriter

__all__ = ["EpisodeWriter"]
