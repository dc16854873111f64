"""Open-Vocabulary SAM (CLIP2SAM stage) building blocks: FPN, multi-level RoIAlign, region
embedding, cosine text classifier, geometric ensemble, text embeddings and the point losses.
See ``../shared/specs/ovsam.md`` §3–§4."""
