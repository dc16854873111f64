"""The documented method × backbone matrix (``tools/backbone_matrix.py``) on the bundled samples
with the tiny presets of the other families (SAM 2.1, HQ-SAM): every pairing that fits trains
where the method trains and evaluates, the DIT family on SAM 2.1 is refused at compose time, and
the leaderboard pivots method × backbone. The ``sam_tiny`` column (a minute of the suite) is
left out here: every method runs on ``sam_tiny`` elsewhere in the suite (its unit tests train and
predict with it, most also through the tools in ``tests/smoke/test_*_cli.py``);
``tools/backbone_matrix.py`` runs all three columns by default."""

from __future__ import annotations

import csv
import json

import pytest

from sambench.cli.backbone_matrix import ENTRIES, main

pytestmark = pytest.mark.slow
BACKBONES = ("sam2_tiny", "sam_hq_tiny")


def test_the_whole_matrix_runs_and_lands_in_one_leaderboard(tmp_path, capsys):
    out = tmp_path / "matrix"
    assert main(["--out", str(out), "--backbones", ",".join(BACKBONES)]) == 0
    printed = capsys.readouterr().out
    board = (out / "leaderboard.md").read_text()
    status = {tuple(cell.strip() for cell in line.strip("|").split("|")[:2]): line.strip("|").split("|")[2].strip()
              for line in board.splitlines()[2:len(ENTRIES) * len(BACKBONES) + 2]}
    assert len(status) == len(ENTRIES) * len(BACKBONES)
    refused = {key for key, state in status.items() if state.startswith("refused at compose time")}
    assert refused == {(m, "sam2_tiny") for m in ("dit_layerwise", "dit_e2e", "sam_text", "sam_text_declayers")}
    assert all(state == "ok" for key, state in status.items() if key not in refused), status
    for (method, backbone), state in status.items():
        if state == "ok":
            metrics = json.loads((out / method / backbone / "eval" / "metrics.json").read_text())
            assert metrics and all(isinstance(v, (int, float, dict, list)) for v in metrics.values())
            trains = next(e.train for e in ENTRIES if e.method == method)
            assert (out / method / backbone / "train" / "checkpoints" / "last.pt").exists() == trains
    # the pivot: PerSeg's methods on both backbones, RefCOCO's without SAM 2.1
    perseg = board.split("perseg: mIoU")[1].split("\n\n")[1]
    assert perseg.splitlines()[0] == "| method | sam2_tiny | sam_hq_tiny |"
    assert [line.split("|")[1].strip() for line in perseg.splitlines()[2:]] == ["persam", "persam_f"]
    assert "| method | sam_hq_tiny |" in board.split("refcoco: mIoU")[1]
    with open(out / "leaderboard.csv") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == len(status) - len(refused)
    assert board.strip() in printed
