"""SSPrompt vs CoOp training-step time and peak memory (Markdown); see sambench.cli.bench_ssprompt."""

import sys

from sambench.cli.bench_ssprompt import main

sys.exit(main(sys.argv[1:]))
