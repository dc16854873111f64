"""Write a dataset.class_names_file from a checkout of the official Open-Vocabulary SAM repository:

    python tools/make_class_names.py --ovsam-repo <official OV-SAM checkout> --source coco --out coco_ov_class_names.json

then ``tools/eval.py method=ovsam dataset=coco_ov dataset.class_names_file=coco_ov_class_names.json ...``.
"""

import sys

import sambench  # noqa: F401  (makes the plugin folders importable as sambench_plugins)

from sambench_plugins.methods.ovsam.class_names_cli import main

sys.exit(main())
