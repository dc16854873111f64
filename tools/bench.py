"""Benchmark: default run time, encoder cache, DDP on CPU (Markdown tables); see sambench.cli.bench."""

import sys

from sambench.cli.bench import main

sys.exit(main(sys.argv[1:]))
