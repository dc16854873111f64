"""Building blocks of PerSAM / PerSAM-F (used by ``methods/persam.py``)."""
