"""Recorders of other environments' episodes, written as the HDF5 files ``jepa-fast pack`` reads (optional
extra ``[envs]``). ``pusht``: gym-pusht's PushT, the end-to-end proof that data jepa-fast did not generate
trains and probes with the README's commands alone."""
