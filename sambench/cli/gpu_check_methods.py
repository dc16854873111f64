"""Section 5 of ``tools/gpu_check.py``: every method at its papers' backbone sizes (``--tiny``: the
test presets), random weights, one fresh process per method (``python -m sambench.cli.gpu_check_methods
--worker NAME --device D [--tiny]`` prints one JSON line), so peak memories do not mix. With
``--tiny`` (a CPU test run) all methods share one process (``--worker A,B,...``): the memory
column is then the growth of that process's peak so far, not a per-method figure.

Measured per row: the training-step time (median of ``--steps`` SGD steps after one warm-up; the
frozen features come from the embedding caches, as sambench trains), the inference time per image
(median of ``--repeats`` ``predict`` calls after one warm-up, caches off: encoders included) and the
peak memory of the whole worker (CUDA ``max_memory_allocated``: weights + activations; CPU: growth
of the peak resident set since the worker started). The builders are the benchmark tools' own
(``bench_dit``, ``bench_ssprompt``, ``bench_persam``) and the registered method classes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from sambench.cli.bench_report import SAM_TINY, SAM_VIT_B, SAM_VIT_H, peak_rss_mib, timed_ms

#: worker name -> (rows it reports, sizes at the papers' settings, sizes with --tiny)
WORKERS = {
    "persam": (("persam", "persam_f"), "SAM ViT-H (PerSAM §4), PerSeg sample", "sam_tiny"),
    "sam2clip": (("sam2clip",), "SAM ViT-H teacher + CLIP RN50x16, adapter 16 heads x 5 (OV-SAM)", "sam_tiny + tiny_rn"),
    "ovsam": (("ovsam",), "SAM ViT-H decoder + CLIP RN50x16 + adapter + FPN 256, 2 images/step (OV-SAM)", "sam_tiny + tiny_rn"),
    "ssprompt": (("ssprompt",), "SAM ViT-B + CLIP ViT-B-16, 150 classes, 100 spatial prompts, batch 2", "sam_tiny + tiny CLIP, 10 classes, 9 prompts, 96x128"),
    "coop": (("coop",), "SAM ViT-B + CLIP ViT-B-16, 150 classes, 16 context tokens, batch 2", "sam_tiny + tiny CLIP, 10 classes, 9 prompts, 96x128"),
    "dit_layerwise": (("dit_layerwise",), "SAM ViT-B + BERT-base, 512² (DIT Table 4), batch 1", "sam_tiny + tiny BERT"),
    "sam_text": (("sam_text",), "SAM ViT-B + BERT-base, 512² (DIT Table 4), batch 1", "sam_tiny + tiny BERT"),
    "sam_prompted": (("sam_prompted",), "SAM ViT-B, GT boxes, decoder fine-tuned, batch 2", "sam_tiny"),
}
#: the papers' figures printed beside each row (source: /work/shared/papers/*.txt)
PAPER = {
    "persam": "training-free; cascaded post-refinement costs +100 ms (PerSAM §3.2)",
    "persam_f": "2 parameters fitted 'within 10 seconds' (PerSAM abstract, §3.3)",
    "sam2clip": "SAM2CLIP adapter 129 M params; ViT-H encoder (637 M) dropped after it (OV-SAM Fig. S1)",
    "ovsam": "no FPS/ms given; 1,180 GFLOPs, 304 M params vs 3,748 G / 808 M for SAM+CLIP image-crop (OV-SAM Table 1)",
    "ssprompt": "56.0 ms/image, 3.82 GB (SSPrompt Table 7, ADE20K, SEEM Focal-T)",
    "coop": "87.5 ms/image, 8.22 GB (SSPrompt Table 7, ADE20K, SEEM Focal-T)",
    "dit_layerwise": "L-DIT 123 ms (DIT Table 4)",
    "sam_text": "SAM-text 123 ms (DIT Table 4)",
    "sam_prompted": "SAM box 120 ms, point 119 ms (DIT Table 4; 512² canvas, here 1024²)",
}
PERSAM_F_ITERATIONS = {"official": 1000, "tiny": 10}


def caches_off(model) -> None:
    """Inference timings include the encoders: drop every embedding / feature cache."""
    from sambench.cache import EmbeddingCache

    for module in model.modules():
        if isinstance(getattr(module, "cache", None), EmbeddingCache):
            module.cache = None


def measure(model, device: torch.device, *, steps: int, repeats: int, train_batch=None, predict_batch=None) -> dict:
    """Median ms of a training step (None without ``train_batch``) and per image of ``predict``."""
    train_ms = None
    if train_batch is not None:
        optimizer = torch.optim.SGD(list(model.trainable_parameters().values()), lr=1e-5, momentum=0.9)
        model.train()

        def step():
            loss = sum(model.training_step(train_batch).values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        step()
        train_ms = statistics.median(timed_ms(step, device) for _ in range(steps))
    model.eval()
    caches_off(model)
    with torch.no_grad():
        model.predict(predict_batch)
        infer = statistics.median(timed_ms(lambda: model.predict(predict_batch), device) for _ in range(repeats))
    return {"train_ms": train_ms, "infer_ms": infer / len(predict_batch),
            "trainable": sum(p.numel() for p in model.trainable_parameters().values())}


# ----- builders: (model, train batch or None, predict batch) on the device ----------------------------
def sam_kwargs(tiny: bool, official: dict) -> dict:
    return SAM_TINY if tiny else official


def build_persam(tiny: bool, device, work: Path):
    from sambench.backbones.sam import SamBackbone
    from sambench.cli.bench_persam import BUNDLED_PERSEG, load_samples
    from sambench.registry import METHODS
    from sambench.structures import Batch

    samples = load_samples(str(BUNDLED_PERSEG), None)
    sam = SamBackbone(**sam_kwargs(tiny, SAM_VIT_H)).eval().to(device)
    return METHODS.get("persam")(sam=sam).to(device), None, Batch([samples[1]])


def build_ovsam(name: str, tiny: bool, device, work: Path):
    from sambench.backbones.sam import SamBackbone
    from sambench.registry import DATASETS, METHODS
    from sambench.structures import collate
    from sambench.testing.coco_synthetic import write_synthetic_coco

    root = str(write_synthetic_coco(work / "coco", num_images=4))
    train, evaluation = DATASETS.get("coco_ov")(split="train", root=root), DATASETS.get("coco_ov")(split="eval", root=root)
    clip = {"model": "tiny_rn" if tiny else "RN50x16", "allow_random_init": True}
    adapter = {"depth": 1, "num_heads": 2} if tiny else {"num_heads": 16, "depth": 5, "window": 14}
    sam = SamBackbone(**sam_kwargs(tiny, SAM_VIT_H), cache_dir=str(work / "cache"))
    if name == "sam2clip":
        model = METHODS.get("sam2clip")(sam=sam, clip=clip, **adapter)
    else:
        small = {"fpn_channels": 32, "num_prompts": 6, "num_points": 400} if tiny else {"fpn_channels": 256}
        model = METHODS.get("ovsam")(sam=sam, clip=clip, adapter=adapter, allow_untrained=True, flip=0.0,
                                     cache_dir=str(work / "cache"), **small)
    return model.to(device), collate([train[0], train[1]]), collate([evaluation[0]])


def build_ssprompt(name: str, tiny: bool, device, work: Path):
    from sambench.cli.bench_ssprompt import prepared
    from sambench.structures import Batch

    sizes = dict(classes=10, grid=3, height=96, width=128) if tiny else dict(classes=150, grid=10, height=384, width=512)
    args = SimpleNamespace(backbone="sam_tiny" if tiny else "sam_vit_b", clip="tiny" if tiny else "ViT-B-16",
                           dense_size=448, batch=2, device=str(device), cache=str(work / "cache"), **sizes)
    model, batch = prepared(args, name)
    return model, batch, Batch([batch[0]])


def build_dit(name: str, tiny: bool, device, work: Path):
    from sambench.cli.bench_dit import build, referring_batch

    image = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    batch = referring_batch(image)
    return build(name, "sam_tiny" if tiny else "sam_vit_b", device), batch, batch


def build_sam_prompted(tiny: bool, device, work: Path):
    from sambench.backbones.sam import SamBackbone
    from sambench.registry import DATASETS, METHODS
    from sambench.structures import collate

    train = DATASETS.get("sample")(split="train", num_images=2)
    sam = SamBackbone(**sam_kwargs(tiny, SAM_VIT_B), cache_dir=str(work / "cache"))
    model = METHODS.get("sam_prompted")(sam=sam).to(device)
    return model, collate([train[0], train[1]]), collate([train[0]])


def build(worker: str, tiny: bool, device, work: Path):
    if worker == "persam":
        return build_persam(tiny, device, work)
    if worker in ("sam2clip", "ovsam"):
        return build_ovsam(worker, tiny, device, work)
    if worker in ("ssprompt", "coop"):
        return build_ssprompt(worker, tiny, device, work)
    if worker in ("dit_layerwise", "sam_text"):
        return build_dit(worker, tiny, device, work)
    return build_sam_prompted(tiny, device, work)


def run_worker(worker: str, tiny: bool, device: torch.device, steps: int, repeats: int) -> list[dict]:
    """Build, time and measure ``worker``'s rows in this process (one JSON-able dict per row)."""
    from sambench.registry import load_plugins

    load_plugins()
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.cuda.reset_peak_memory_stats(device)
    base_rss = peak_rss_mib()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        model, train_batch, predict_batch = build(worker, tiny, device, Path(tmp))
        result = measure(model, device, steps=steps, repeats=repeats, train_batch=train_batch, predict_batch=predict_batch)
        rows = [{"method": worker, **result}]
        if worker == "persam":
            rows.append(fit_persam_f(model.sam, predict_batch[0], tiny, repeats))
    memory = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else peak_rss_mib() - base_rss
    for row in rows:
        row["memory_mib"] = memory
    return rows


def fit_persam_f(sam, sample, tiny: bool, repeats: int) -> dict:
    """PerSAM-F's fitting (``adapt``: reference features + the 2-weight fit) and its inference."""
    from sambench.cli.bench_persam import time_fitting
    from sambench.registry import METHODS
    from sambench.structures import Batch

    iterations = PERSAM_F_ITERATIONS["tiny" if tiny else "official"]
    time_fitting(sam, sample, 1, precompute=True)  # warm-up
    seconds, _ = time_fitting(sam, sample, iterations, precompute=True)
    method = METHODS.get("persam_f")(sam=sam, iterations=iterations)
    device = sam.device
    with torch.no_grad():
        method.predict(Batch([sample]))  # fits once (cached per concept), then pure inference
        infer = statistics.median(timed_ms(lambda: method.predict(Batch([sample])), device) for _ in range(repeats))
    return {"method": "persam_f", "train_ms": seconds * 1000 / iterations, "infer_ms": infer, "trainable": 2,
            "fit_s": seconds, "fit_iterations": iterations}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", required=True, help=f"comma-separated, run in this order: {','.join(WORKERS)}")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    workers = [w.strip() for w in args.worker.split(",") if w.strip()]
    unknown = [w for w in workers if w not in WORKERS]
    if unknown or not workers:
        parser.error(f"--worker: unknown {', '.join(unknown) or '(none given)'}; valid: {', '.join(WORKERS)}")
    print(json.dumps([row for worker in workers for row in run_worker(worker, args.tiny, device, args.steps, args.repeats)]))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
