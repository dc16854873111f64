"""PerSAM benchmark: PerSAM-F fitting cost, PerSAM cold vs warm cache (Markdown); see sambench.cli.bench_persam."""

import sys

from sambench.cli.bench_persam import main

sys.exit(main(sys.argv[1:]))
