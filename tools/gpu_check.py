"""GPU check: collectives, 1-vs-N evaluation, mixed precision, methods at the papers' sizes (Markdown); see sambench.cli.gpu_check."""

import sys

from sambench.cli.gpu_check import main

sys.exit(main(sys.argv[1:]))
