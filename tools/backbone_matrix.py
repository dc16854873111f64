"""Every method × backbone pairing on the bundled samples with the tiny presets, and the leaderboard;
see sambench.cli.backbone_matrix."""

import sys

from sambench.cli.backbone_matrix import main

sys.exit(main(sys.argv[1:]))
