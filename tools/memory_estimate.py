"""Estimated GPU memory of a training step per backbone / PEFT mode / precision / checkpointing, and the
largest batch for 16 / 24 / 80 GB GPUs (Markdown); see sambench.cli.memory_estimate."""

import sys

from sambench.cli.memory_estimate import main

sys.exit(main(sys.argv[1:]))
