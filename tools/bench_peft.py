"""PEFT cost benchmark: full fine-tuning vs LoRA vs frozen encoder for sam_prompted (step time, peak memory,
trainable parameters, ratios; Markdown); see sambench.cli.bench_peft."""

import sys

from sambench.cli.bench_peft import main

sys.exit(main(sys.argv[1:]))
