"""DIT benchmark: L-DIT vs text-prompted SAM inference time per image (Markdown); see sambench.cli.bench_dit."""

import sys

from sambench.cli.bench_dit import main

sys.exit(main(sys.argv[1:]))
