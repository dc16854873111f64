"""Open-Vocabulary SAM: the ``sam2clip`` / ``clip2sam`` stages, ``ovsam`` inference and the
``image_crop`` / ``feature_crop`` baselines, with their building blocks (SAM2CLIP adapter, FPN,
multi-level RoIAlign, label token, cosine text classifier, ensemble, point losses), the authors'
checkpoint layouts (``official_checkpoint.py``) and README."""

from . import baselines, ovsam  # noqa: F401  (register the methods)
