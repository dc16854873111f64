"""Every method on every backbone that fits: train where the method trains, evaluate, and one
method × backbone leaderboard (``tools/summarize.py`` pivot).

``python tools/backbone_matrix.py [--out outputs/backbone_matrix] [--backbones sam_tiny,sam2_tiny,sam_hq_tiny]
[--methods ...]`` runs on the bundled samples (``sample``, ``datasets/perseg_sample``) and on
small generated copies of Cityscapes, COCO (open-vocabulary), RefCOCO and an image folder in the
real layouts (``sambench.testing``'s writers), with the tiny random presets: a few minutes on a
laptop CPU. The numbers of random models say nothing about the methods; the run proves that
every pairing builds, trains, evaluates and lands in the table. Pairings a backbone cannot serve
are refused at compose time and listed as such. Each job runs in this process
(:func:`sambench.testing.run_job`, exactly what ``tools/train.py`` / ``tools/eval.py`` do).

Writes ``<out>/<method>/<backbone>/{train,eval}`` run folders, ``<out>/data`` and
``<out>/leaderboard.{md,csv}``; exit status 1 when a pairing that should run failed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from dataclasses import dataclass
from pathlib import Path

from sambench.cli import summarize

#: the tiny random presets of the three backbone families
TINY_BACKBONES = ("sam_tiny", "sam2_tiny", "sam_hq_tiny")
CPU = ("trainer.device=cpu",)


@dataclass(frozen=True)
class Entry:
    """One method's matrix row: its dataset (``data``: the generated folder it reads, or None for
    a bundled one), whether it trains first, the overrides that keep it quick, and the runs of
    the same backbone it builds on (``after``: (method, config key) pairs, passed as ``key=<run>``)."""

    method: str
    dataset: str
    train: bool
    data: str | None = None
    overrides: tuple[str, ...] = ()
    after: tuple[tuple[str, str], ...] = ()


SEMANTIC = ("method.grid=2", "dataset.few_shot.shots=1", "trainer.max_steps=2", "trainer.batch_size=2",
            "trainer.eval.batch_size=2")
SMALL_ADAPTER = ("method.adapter.depth=1", "method.adapter.num_heads=2", "method.adapter.dim=32")
REFERRING = ("trainer.max_steps=2", "trainer.batch_size=2", "trainer.eval.batch_size=4")
ENTRIES = (
    Entry("sam_prompted", "sample", train=True, overrides=("trainer.max_steps=10",)),
    Entry("persam", "perseg", train=False),
    Entry("persam_f", "perseg", train=False, overrides=("method.iterations=5",)),
    Entry("ssprompt", "cityscapes", train=True, data="cityscapes", overrides=SEMANTIC),
    Entry("spaprompt", "cityscapes", train=True, data="cityscapes", overrides=SEMANTIC),
    Entry("semprompt", "cityscapes", train=True, data="cityscapes", overrides=SEMANTIC),
    Entry("coop", "cityscapes", train=True, data="cityscapes", overrides=SEMANTIC),
    Entry("zero_shot_prompts", "cityscapes", train=False, data="cityscapes", overrides=SEMANTIC),
    Entry("sam2clip", "image_folder", train=True, data="images",
          overrides=("dataset.eval_images=1", "method.depth=1", "method.num_heads=2", "method.dim=32",
                     "trainer.max_steps=1")),
    Entry("clip2sam", "coco_ov", train=True, data="coco",
          overrides=(*SMALL_ADAPTER, "method.num_prompts=2", "method.num_points=256", "trainer.max_steps=1",
                     "trainer.schedule.warmup_steps=0", "trainer.batch_size=1", "method.allow_untrained=false"),
          after=(("sam2clip", "method.sam2clip_checkpoint"),)),
    Entry("ovsam", "coco_ov", train=False, data="coco", overrides=(*SMALL_ADAPTER, "method.allow_untrained=false"),
          after=(("sam2clip", "method.sam2clip_checkpoint"), ("clip2sam", "method.clip2sam_checkpoint"))),
    Entry("image_crop", "coco_ov", train=False, data="coco"),
    Entry("feature_crop", "coco_ov", train=False, data="coco"),
    Entry("dit_layerwise", "refcoco", train=True, data="refcoco", overrides=REFERRING),
    Entry("dit_e2e", "refcoco", train=True, data="refcoco", overrides=REFERRING),
    Entry("sam_text", "refcoco", train=True, data="refcoco", overrides=REFERRING),
    Entry("sam_text_declayers", "refcoco", train=True, data="refcoco", overrides=REFERRING),
)


def write_data(folder: Path) -> dict[str, Path]:
    """The generated datasets (real on-disk layouts), written once under ``folder``."""
    import numpy as np
    from PIL import Image

    from sambench.testing.coco_synthetic import write_synthetic_coco
    from sambench.testing.refcoco_synthetic import write_synthetic_refcoco
    from sambench.testing.semantic_synthetic import write_synthetic_cityscapes

    roots = {"cityscapes": folder / "cityscapes", "coco": folder / "coco", "refcoco": folder / "refcoco",
             "images": folder / "images"}
    if not roots["cityscapes"].exists():
        write_synthetic_cityscapes(roots["cityscapes"], train_images=2, val_images=2)
    if not roots["coco"].exists():
        write_synthetic_coco(roots["coco"], num_images=2)
    if not roots["refcoco"].exists():
        write_synthetic_refcoco(roots["refcoco"], num_images=4)
    if not roots["images"].exists():
        roots["images"].mkdir(parents=True)
        rng = np.random.default_rng(0)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(roots["images"] / f"sa_{i}.jpg")
    return roots


def refusal(method: str, backbone: str) -> str | None:
    """The compose-time message when ``backbone`` cannot serve ``method`` (None when it can)."""
    from hydra import compose, initialize_config_dir

    from sambench import REPO_ROOT
    from sambench.cli.build import check_config
    from sambench.errors import ConfigError
    from sambench.registry import load_plugins

    load_plugins()
    with initialize_config_dir(str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose("eval", overrides=[f"method={method}", f"backbone={backbone}"])
    try:
        check_config(cfg)
    except ConfigError as exc:
        if "backbone capabilities" in str(exc):
            return str(exc)
        raise
    return None


def run_pair(entry: Entry, backbone: str, out: Path, roots: dict[str, Path], runs: dict) -> str:
    """Train (if the method trains) and evaluate one pairing -> ``ok`` or a one-line failure."""
    from sambench.testing import run_job

    base = [f"method={entry.method}", f"dataset={entry.dataset}", f"backbone={backbone}", *CPU, *entry.overrides]
    if entry.data:
        base.append(f"dataset.root={roots[entry.data]}")
    for method, key in entry.after:
        before = runs.get((method, backbone))
        if before is None:
            return f"not run: needs a successful {method} run of {backbone} first (--methods {method},...,{entry.method})"
        base.append(f"{key}={before}")
    folder = out / entry.method / backbone
    checkpoint = []
    if entry.train:
        result = run_job("train", *base, f"hydra.run.dir={folder / 'train'}")
        if result.returncode != 0:
            return "train failed: " + (result.stderr.strip().splitlines() or ["?"])[-1]
        runs[(entry.method, backbone)] = folder / "train"
        checkpoint = [f"ckpt={folder / 'train'}"]
    result = run_job("eval", *base, *checkpoint, f"hydra.run.dir={folder / 'eval'}")
    if result.returncode != 0:
        return "eval failed: " + (result.stderr.strip().splitlines() or ["?"])[-1]
    return "ok"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="backbone_matrix.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/backbone_matrix"), help="output folder")
    parser.add_argument("--backbones", default=",".join(TINY_BACKBONES), help="comma-separated backbone configs")
    parser.add_argument("--methods", default=",".join(e.method for e in ENTRIES),
                        help=f"comma-separated subset of: {', '.join(e.method for e in ENTRIES)}")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    """Run the matrix, print the status of every pairing and the leaderboard; 1 if any failed."""
    args = parse_args(argv)
    known = {entry.method: entry for entry in ENTRIES}
    methods = [name.strip() for name in args.methods.split(",") if name.strip()]
    unknown = [name for name in methods if name not in known]
    if unknown:
        print(f"error: unknown matrix method(s) {', '.join(unknown)}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    backbones = [name.strip() for name in args.backbones.split(",") if name.strip()]
    out = args.out.resolve()
    roots = write_data(out / "data")
    runs: dict = {}
    status: dict[tuple[str, str], str] = {}
    for entry in (known[name] for name in methods):
        for backbone in backbones:
            why = refusal(entry.method, backbone)
            status[(entry.method, backbone)] = (f"refused at compose time ({why.split('; backbones that fit')[0]})"
                                                if why else run_pair(entry, backbone, out, roots, runs))
            print(f"{entry.method:14s} {backbone:12s} {status[(entry.method, backbone)]}", flush=True)
    evals = [out / method / backbone / "eval" for (method, backbone), state in status.items() if state == "ok"]
    lines = ["| method | backbone | status |", "|---|---|---|"]
    lines += [f"| {method} | {backbone} | {state} |" for (method, backbone), state in status.items()]
    board = "\n".join(lines)
    if evals:
        table = io.StringIO()
        with contextlib.redirect_stdout(table):
            summarize.main([*map(str, evals), "--csv", str(out / "leaderboard.csv"), "--pivot", ""])
        board += "\n\n" + table.getvalue()
    (out / "leaderboard.md").write_text(board + "\n")
    print("\n" + board)
    print(f"wrote {out / 'leaderboard.md'} and {out / 'leaderboard.csv'}", file=sys.stderr)
    failed = [key for key, state in status.items() if not (state == "ok" or state.startswith("refused"))]
    return 1 if failed else 0
