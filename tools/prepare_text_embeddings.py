"""Cache a method's class text embeddings ahead of time:
``python tools/prepare_text_embeddings.py method=ovsam dataset=coco_ov dataset.root=<coco dir>``.

Writes ``<cache.dir>/text-<clip>-<key>.pt`` for the training and evaluation vocabularies (the
methods would otherwise generate them on first use) and ``<run dir>/text_embeddings.json``.
"""

from sambench.cli.launch import launch
from sambench_plugins.methods.ovsam.text_embeddings_cli import prepare_text_embeddings

if __name__ == "__main__":
    launch(prepare_text_embeddings, "train")
