"""Write a dataset.class_names_file from a checkout of the official Open-Vocabulary SAM repository:

    python tools/make_class_names.py --ovsam-repo <official OV-SAM checkout> --source coco --out coco_ov_class_names.json

then ``tools/eval.py method=ovsam dataset=coco_ov dataset.class_names_file=coco_ov_class_names.json ...``.
"""

import sys

from sambench.cli.class_names import main

sys.exit(main())
