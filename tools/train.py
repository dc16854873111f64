"""Train a method: ``python tools/train.py method=<m> dataset=<d> backbone=<b> [key=value ...]``.

Multi-GPU/CPU: ``torchrun --nproc_per_node=N tools/train.py ...``. See README.md.
"""

from sambench.cli.jobs import train
from sambench.cli.launch import launch

if __name__ == "__main__":
    launch(train, "train")
