"""Leaderboard (Markdown + CSV + optional chart) over run folders; see sambench.cli.summarize."""

import sys

from sambench.cli.summarize import main

sys.exit(main(sys.argv[1:]))
