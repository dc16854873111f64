"""Open-Vocabulary SAM (Yuan et al. 2024): SAM2CLIP, CLIP2SAM and inference (``methods/ovsam/README.md``).

``sam2clip``: a frozen CLIP ResNet (RN50x16 by default) sees the image exactly as SAM does
(longest side 1024, SAM's ImageNet mean/std, zero padding to 1024²); its four stage maps go through
the trainable :class:`~methods.ovsam.adapter.Sam2ClipAdapter`, trained by MSE to the SAM
teacher's image embedding (256×64×64). Teacher embeddings come from the embedding cache: each is
computed once and reused every epoch (the teacher's encoder runs only on a cache miss).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from sambench import tasks
from sambench.backbones.clip import ClipBackbone
from sambench.backbones.interface import EXTRA_OUTPUT_TOKENS, VIT_ENCODER, ImageFeatures
from sambench.checkpoint import load_trainable
from sambench.evaluation.open_vocab import instance_outputs
from sambench.errors import CheckpointError, ConfigError
from sambench.method import SambenchMethod
from .adapter import Sam2ClipAdapter, teacher_sizes
from .augment import large_scale_jitter
from .center_points import POINT_RULES, official_center_points
from .classifier import clip_valid, cosine_logits, geometric_ensemble
from .fpn import FPN
from .input_frame import IMAGE_RESIZES, eval_pixels
from .label_token import LABEL_MODES, LabelToken
from .losses import classification_loss, point_mask_losses
from .prompting import (DetectionBoxes, check_eval_prompt, gt_prompts, num_box_prompts, random_foreground_points,
                                      training_prompt_indices)
from .roi import RegionEmbedding, multi_level_roi_align
from .stage_weights import load_exactly, read_stage_file, with_prefix
from .official_checkpoint import export_official_clip2sam, export_official_sam2clip, load_official_clip2sam, load_official_sam2clip
from .vocabulary import TextEmbeddingBank
from sambench.prompts import mask_boxes
from sambench.peft import PeftSettings, apply_peft, merge_adapters
from sambench.registry import METHODS, register_preset
from sambench.structures import Batch, Detection, Prediction, Sample

CLIP_BOX_FRAMES = ("input", "original")
CLIP_ROIS = ("prompt_box", "mask_box")
EMPTY_MASK_ROIS = ("zero", "prompt")


def resnet_stage_channels(clip: ClipBackbone) -> tuple[int, ...]:
    """Output channels of layer1..layer4 of a CLIP ResNet (RN50x16: 384, 768, 1536, 3072)."""
    visual = clip.clip.visual
    return tuple(int(getattr(visual, f"layer{i}")[-1].conv3.out_channels) for i in range(1, 5))


#: adapter sizes for a teacher that is no plain ViT (SAM 2.1, Light HQ-SAM), unless the config sets them
NON_VIT_ADAPTER = {"dim": 256, "num_heads": 8}


def build_adapter(clip: ClipBackbone, sam, *, num_heads: int | None = None, depth: int = 5,
                  window: int = 14, dim: int | None = None) -> Sam2ClipAdapter:
    """The SAM2CLIP adapter sized by the SAM it imitates: its ViT's width, grid and (unless
    ``num_heads`` is given) head count (ViT-H: 1280 / 64 / 16, so 128.8 M parameters; sam_tiny:
    32 / 64 / 2, a few seconds per image on a CPU), with SAM's position embedding copied in.
    A teacher without a plain ViT (no ``vit_encoder`` capability) gives ``dim`` / ``num_heads``
    (None: :data:`NON_VIT_ADAPTER`) and no position embedding; the levels its token decoder
    needs (``token_decoder_levels``) get prediction heads."""
    vit = VIT_ENCODER in sam.capabilities
    if vit:
        sizes = teacher_sizes(sam.encoder_spec())
        if dim is not None and dim != sizes["dim"]:
            raise ConfigError(f"adapter dim={dim}: with a ViT teacher the adapter takes its width ({sizes['dim']}); "
                              "leave dim null")
    else:
        grid = sam.image_size // 16
        sizes = {"dim": dim or NON_VIT_ADAPTER["dim"], "num_heads": NON_VIT_ADAPTER["num_heads"], "grid": grid}
    if num_heads is not None:
        sizes["num_heads"] = num_heads
    if sizes["dim"] % sizes["num_heads"]:
        raise ConfigError(f"adapter num_heads={sizes['num_heads']} does not divide the adapter width {sizes['dim']}")
    adapter = Sam2ClipAdapter(in_channels=resnet_stage_channels(clip), depth=depth, window=window,
                              levels=sam.token_decoder_levels(), **sizes)
    if vit:
        adapter.copy_pos_embed(sam.encoder_pos_embed())
    return adapter


def distillation_loss(student: ImageFeatures, teacher: ImageFeatures) -> torch.Tensor:
    """MSE of the embedding plus, for each level the student predicts, that level's MSE."""
    loss = F.mse_loss(student.embedding, teacher.embedding)
    for name, level in student.levels.items():
        loss = loss + F.mse_loss(level, teacher.levels[name])
    return loss


@METHODS.register_module(name="sam2clip")
class Sam2Clip(SambenchMethod):
    """Args:
        sam: the teacher (its image encoder, through the cache); its ViT width and position
            embedding size the adapter (ViT-H: 1280, 64×64).
        clip: :class:`ClipBackbone` keyword arguments (a ResNet model: RN50x16 officially).
        num_heads / depth / window: the adapter's transformer (official: 16 / 5 / 14); num_heads
            None = the teacher ViT's (ViT-H 16, sam_tiny 2).
        dim: adapter width for a teacher that is no plain ViT (None: 256); a ViT teacher sets it.
    """

    TASK = tasks.IMAGE_DISTILLATION

    def __init__(self, *, sam, clip: dict | None = None, num_heads: int | None = None, depth: int = 5,
                 window: int = 14, dim: int | None = None):
        super().__init__()
        sam.set_trainable()
        self.sam = sam
        self.clip = ClipBackbone(**(clip or {"model": "RN50x16"}))
        self.adapter = build_adapter(self.clip, sam, num_heads=num_heads, depth=depth, window=window, dim=dim)

    def student(self, images) -> ImageFeatures:
        """Images -> student features: embedding B×256×64×64 plus the levels the backbone's token
        decoder needs (CLIP frozen, adapter trainable), in the teacher's input frame."""
        pixels = torch.cat([self.sam.preprocess(image) for image in images])
        with torch.no_grad():
            stages = self.clip.stage_features(pixels)
        return self.adapter.features(stages)

    def official_files(self, *, name: str, backbone: str, dataset: str, ddp_prefix: bool = False) -> dict[str, dict]:
        """``sam2clip_<sam>_<clip>.pth`` (``neck_student.*``)."""
        clip = self.clip.name.lower().replace("-", "")
        return {f"sam2clip_{backbone}_{clip}.pth": export_official_sam2clip(self)}

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        images = [sample.image for sample in batch]
        teacher = self.sam.embed_images(images)  # the target is the embedding itself (and any levels)
        return {"loss_mse": distillation_loss(self.student(images), teacher)}

    @torch.no_grad()
    def predict(self, batch: Batch) -> list[Prediction]:
        images = [sample.image for sample in batch]
        teacher, student = self.sam.embed_images(images).embedding, self.student(images).embedding.float()
        predictions = []
        for sample, t, s in zip(batch, teacher, student):
            cosine = F.cosine_similarity(s, t, dim=0).mean()
            predictions.append(Prediction(index=sample.index, embedding_mse=float(F.mse_loss(s, t)),
                                          embedding_cosine=float(cosine)))
        return predictions


@METHODS.register_module(name="clip2sam")
class Clip2Sam(SambenchMethod):
    """Open-Vocabulary SAM stage 2 (CLIP2SAM) and its inference (the official
    CLIP2SAM training and inference configs; ``README.md`` lists each step).

    Image embedding = frozen CLIP ResNet -> frozen SAM2CLIP adapter (SAM's ViT is never run and
    is freed); SAM's prompt encoder (frozen) and mask decoder (trainable, single mask token, the
    label token in the IoU token's place); RoI branch = FPN on the CLIP stage maps -> RoIAlign
    12² -> Conv1×1 + ReLU + mean -> cosine classifier against the class text embeddings (max over
    synonyms, × ``logit_scale``, zero background prototype). Inference adds the frozen-CLIP
    branch (layer4 RoIAlign -> ``attnpool``) and the α/β geometric ensemble.

    Args (see ``conf/method/clip2sam.yaml`` for every knob):
        sam: SAM (prompt encoder, mask decoder, its ViT's pos_embed for the adapter).
        clip: :class:`ClipBackbone` kwargs (a ResNet: RN50x16 officially).
        adapter: :class:`Sam2ClipAdapter` sizes (num_heads, depth, window; num_heads None = SAM's ViT's).
        fpn_channels: FPN / RoI width (official 256; the tiny method config uses 32).
        sam2clip_checkpoint / clip2sam_checkpoint: sambench runs (file or folder) of each stage.
        allow_untrained: run without those files (random adapter / head: tests only).
        label_token: ``zero`` | ``add`` | ``only`` (:mod:`methods.ovsam.label_token`).
        prompt: evaluation prompts ``box`` | ``point`` | ``detections`` (+ ``detections`` json).
        ensemble / alpha / beta: the frozen-CLIP geometric ensemble (base α, novel β).
        clip_box_frame: ``input`` (boxes scaled into the 1024 frame) | ``original`` (the
            official code's un-scaled GT boxes for the CLIP branch, kept for parity).
        clip_rois: the frozen-CLIP branch's RoIs: ``prompt_box`` (official: the GT box of each
            instance, also with point prompts; the detector's box) | ``mask_box`` (the predicted
            mask's box, as the RoI branch).
        empty_mask_roi: RoI-branch box of an empty predicted mask: ``zero`` (official: mmdet's
            ``mask2bbox`` gives (0, 0, 0, 0)) | ``prompt`` (the prompt box; the image for points).
        image_resize: ``cv2`` (official mmcv/cv2 bilinear on uint8) | ``pil`` (SamPredictor's PIL
            path) (:mod:`methods.ovsam.input_frame`).
        point_rule: GT point prompts: ``official`` (kornia's cascaded distance transform on the
            mask rescaled to the input frame, :mod:`methods.ovsam.center_points`) | ``edt``
            (scipy's exact transform on the original-size mask).
    """

    TASK = tasks.OPEN_VOCAB_INSTANCE
    REQUIRES = frozenset({EXTRA_OUTPUT_TOKENS})
    ROOT_KWARGS = ("cache_dir",)

    def __init__(
        self, *, sam, clip: dict | None = None, adapter: dict | None = None, sam2clip_checkpoint: str | None = None,
        clip2sam_checkpoint: str | None = None, allow_untrained: bool = False, label_token: str = "zero",
        prompt: str = "box", detections: str | None = None, score_threshold: float = 0.0, max_detections: int = 100,
        ensemble: bool = True, alpha: float = 0.1, beta: float = 0.9, clip_box_frame: str = "input",
        clip_rois: str = "prompt_box", empty_mask_roi: str = "zero", image_resize: str = "cv2",
        point_rule: str = "official",
        num_prompts: int = 40, num_points: int = 12544, oversample_ratio: float = 3.0, importance_ratio: float = 0.75,
        cls_weight: float = 2.0, bce_weight: float = 5.0, dice_weight: float = 5.0, background_weight: float = 0.1,
        logit_scale: float = 100.0, flip: float = 0.5, scale_range: tuple[float, float] = (0.9, 2.0),
        min_mask_area: int = 32, fpn_channels: int = 256, cache_dir: str | None = None,
    ):
        super().__init__()
        check_eval_prompt(prompt, detections)
        if clip_box_frame not in CLIP_BOX_FRAMES:
            raise ConfigError(f"unknown method.clip_box_frame '{clip_box_frame}'; valid: {', '.join(CLIP_BOX_FRAMES)}")
        for option, value, valid in (("clip_rois", clip_rois, CLIP_ROIS), ("empty_mask_roi", empty_mask_roi, EMPTY_MASK_ROIS),
                                     ("image_resize", image_resize, IMAGE_RESIZES), ("point_rule", point_rule, POINT_RULES)):
            if value not in valid:
                raise ConfigError(f"unknown method.{option} '{value}'; valid: {', '.join(valid)}")
        if label_token not in LABEL_MODES:
            raise ConfigError(f"unknown method.label_token '{label_token}'; valid: {', '.join(LABEL_MODES)}")
        if num_prompts < 1:
            raise ConfigError(f"method.num_prompts must be >= 1, got {num_prompts}")
        self.sam, self.prompt, self.ensemble, self.alpha, self.beta = sam, prompt, ensemble, alpha, beta
        self.clip_box_frame, self.num_prompts, self.logit_scale = clip_box_frame, num_prompts, logit_scale
        self.clip_rois, self.empty_mask_roi, self.image_resize, self.point_rule = clip_rois, empty_mask_roi, image_resize, point_rule
        self.point_loss = dict(num_points=num_points, oversample=oversample_ratio, importance=importance_ratio)
        self.weights = dict(cls=cls_weight, bce=bce_weight, dice=dice_weight, background=background_weight)
        self.jitter = dict(scale_range=tuple(scale_range), flip=flip, min_mask_area=min_mask_area)
        self.clip = ClipBackbone(**(clip or {"model": "RN50x16"}))
        channels, embed_dim = resnet_stage_channels(self.clip), self.clip.embed_dim
        self.adapter = build_adapter(self.clip, sam, **(adapter or {}))
        sam.drop_image_encoder("Open-Vocabulary SAM's image embedding comes from CLIP + the SAM2CLIP adapter")
        self.label = LabelToken(dim=sam.embed_dim, embed_dim=embed_dim, mode=label_token)
        self.fpn = FPN(list(channels), fpn_channels, 4)
        self.region = RegionEmbedding(fpn_channels, embed_dim)
        self.texts = TextEmbeddingBank(self.clip, cache_dir)
        self.detections = DetectionBoxes(detections, score_threshold, max_detections) if prompt == "detections" else None
        self._freeze()
        self._load_stages(sam2clip_checkpoint, clip2sam_checkpoint, allow_untrained)

    def _freeze(self) -> None:
        """Trainable: SAM's decoder (without the IoU head and the unused multimask MLPs), the label
        token, FPN and region embedding. Frozen: CLIP, adapter, prompt encoder."""
        self.sam.set_trainable(mask_decoder=True, output_token_only=True)
        self.adapter.requires_grad_(False)

    def _load_stages(self, sam2clip_checkpoint, clip2sam_checkpoint, allow_untrained: bool) -> None:
        """Stage weights from sambench runs or the authors' released files (told apart by content)."""
        if sam2clip_checkpoint:
            option = "method.sam2clip_checkpoint"
            kind, tensors, _ = read_stage_file(sam2clip_checkpoint, option)
            if kind == "official":
                load_official_sam2clip(self, tensors, sam2clip_checkpoint)
            else:
                load_exactly(self.adapter, with_prefix(tensors, "adapter.", option, sam2clip_checkpoint), option,
                             sam2clip_checkpoint, allowed_missing=("pos_embed",))
        elif not allow_untrained:
            raise CheckpointError(
                "method.sam2clip_checkpoint is not set: train stage 1 first (tools/train.py method=sam2clip ...) and "
                "pass its run folder, or the authors' sam2clip_vith_rn50x16.pth; method.allow_untrained=true runs "
                "with a random adapter (tests only)")
        if clip2sam_checkpoint:
            kind, tensors, peft = read_stage_file(clip2sam_checkpoint, "method.clip2sam_checkpoint")
            if kind == "official":
                load_official_clip2sam(self, tensors, clip2sam_checkpoint)
            else:
                tensors = {k: v for k, v in tensors.items() if not k.startswith("adapter.")}
                self._load_clip2sam_run(tensors, peft, Path(clip2sam_checkpoint))

    def _load_clip2sam_run(self, tensors: dict, peft: dict | None, path: Path) -> None:
        """A sambench CLIP2SAM run's trained tensors; a run trained with ``method.peft`` adapters
        gets the same adapters here, filled, then merged into the decoder's weights (this model's
        own parameters are then as without adapters)."""
        if not peft:
            load_trainable(self.trainable_parameters(), tensors, path)
            return
        trains = {name: p.requires_grad for name, p in self.named_parameters()}
        apply_peft(self, PeftSettings.from_dict(peft))
        load_trainable(self.trainable_parameters(), tensors, path)
        merge_adapters(self)
        for name, param in self.named_parameters():  # what this method trains, as before the stage's settings
            param.requires_grad_(trains[name])
        self.peft_settings = None

    # ----- tensor-level pieces (also used by tools/count_flops.py) ------------------------------
    def image_features(self, pixels: torch.Tensor) -> tuple[ImageFeatures, list[torch.Tensor], list[torch.Tensor]]:
        """pixels B×3×1024×1024 (SAM-normalised, padded) -> (adapter features: embedding
        B×256×64×64 plus any levels the backbone's decoder needs, CLIP stage maps
        [B×C_i×1024/s_i²] for s = 4, 8, 16, 32, FPN maps [B×256×…])."""
        with torch.no_grad():
            stages = self.clip.stage_features(pixels)
            features = self.adapter.features(stages)
        return features, stages, self.fpn(stages)

    def decode(self, embedding: ImageFeatures, sparse: torch.Tensor, dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One image: features (embedding 1×256×64×64), N prompts -> (low-res logits N×1×256×256, label-token output N×256)."""
        return self.sam.decode_with_output_token(embedding, self.label.token.weight, sparse, dense)

    def class_logits(self, fpn: list[torch.Tensor], rois: torch.Tensor, token_out: torch.Tensor,
                     text: torch.Tensor) -> torch.Tensor:
        """RoI branch: rois K×5 (batch index, xyxy in the 1024 frame), token_out K×256, text
        C×P×D -> K×(C+1) logits (background last, always 0)."""
        region = None if self.label.mode == "only" else self.region(multi_level_roi_align(fpn, rois))
        return cosine_logits(self.label.class_embedding(token_out, region), text, self.logit_scale)

    def clip_logits(self, layer4: torch.Tensor, rois: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Frozen-CLIP branch: layer4 B×C×32×32, rois K×5 -> K×(C+1) (RoIAlign on the attnpool
        grid at scale 1/32, then ``attnpool``)."""
        grid = int(round((self.clip.clip.visual.attnpool.positional_embedding.shape[0] - 1) ** 0.5))
        regions = roi_align(layer4, rois.to(layer4.dtype), grid, spatial_scale=1 / 32, sampling_ratio=0, aligned=True)
        return cosine_logits(self.clip.pool_regions(regions), text, self.logit_scale)

    def prompt_embeddings(self, boxes: torch.Tensor | None = None, points: torch.Tensor | None = None):
        """Frame-coordinate prompts (boxes N×4, or points N×2 foreground) -> sparse N×2×256, dense N×256×64×64."""
        if boxes is not None:
            return self.sam.encode_frame_prompts(boxes=boxes)
        labels = torch.ones(points.shape[0], 1, dtype=torch.long, device=points.device)
        return self.sam.encode_frame_prompts(points=points[:, None], point_labels=labels)

    # ----- training -----------------------------------------------------------------------------
    def official_files(self, *, name: str, backbone: str, dataset: str, ddp_prefix: bool = False) -> dict[str, dict]:
        """The stage-1 file it was built with and ``clip2sam_<dataset>_<clip>.pth`` (``fpn_neck.*`` +
        ``mask_decoder.*``)."""
        clip = self.clip.name.lower().replace("-", "")
        return {f"sam2clip_{backbone}_{clip}.pth": export_official_sam2clip(self),
                f"clip2sam_{dataset.removesuffix('_ov')}_{clip}.pth": export_official_clip2sam(self)}

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """CE (×2, background 0.1) on the RoI-branch logits of the GT boxes, BCE (×5) and Dice
        (×5) on 12,544 importance-sampled points of the 256² logits; ``num_prompts`` prompts per
        image (each instance repeated to fill them, shuffled; ``num // 2 + 1`` boxes, the rest single points)."""
        device, size = self.sam.device, self.sam.image_size
        text = self.texts(batch[0].class_names, batch[0].meta.get("synonym_lists"))
        logits, labels, masks, targets = [], [], [], []
        for sample in batch:
            image, gt, keep = large_scale_jitter(sample.image, sample.masks, size=size, device=device, **self.jitter)
            if not len(keep):
                continue
            embedding, _, fpn = self.image_features(self.sam.normalize_pixels(image[None]))
            index = training_prompt_indices(len(keep), self.num_prompts)
            index = index[torch.randperm(len(index))].to(device)  # official: shuffled, then boxes first
            boxes = mask_boxes(gt)[index]
            half = num_box_prompts(len(index))
            points = random_foreground_points(gt[index[half:]].cpu()).to(device)
            sparse_b, dense_b = self.prompt_embeddings(boxes=boxes[:half])
            sparse_p, dense_p = self.prompt_embeddings(points=points)
            if sparse_b.shape[1] == sparse_p.shape[1]:  # SAM v1: a box and a point are both 2 tokens
                low_res, token_out = self.decode(embedding, torch.cat([sparse_b, sparse_p]), torch.cat([dense_b, dense_p]))
            else:  # SAM 2.1 pads a box to 3 tokens: decode the two groups apart (prompt sets are independent)
                outputs = [self.decode(embedding, sparse, dense) for sparse, dense in ((sparse_b, dense_b), (sparse_p, dense_p))
                           if len(sparse)]
                low_res, token_out = (torch.cat(parts) for parts in zip(*outputs))
            rois = torch.cat([boxes.new_zeros(len(boxes), 1), boxes], dim=1)
            logits.append(self.class_logits(fpn, rois, token_out, text))
            labels.append(sample.class_ids.to(device)[keep.to(device)][index])
            masks.append(low_res)
            targets.append(F.pad(gt, (0, size - gt.shape[-1], 0, size - gt.shape[-2]))[index])
        if not logits:  # every instance was cropped away: a zero loss that still reaches every parameter
            zero = sum(p.sum() for p in self.trainable_parameters().values()) * 0.0
            return {"loss_cls": zero, "loss_mask_bce": zero, "loss_mask_dice": zero}
        cls = classification_loss(torch.cat(logits), torch.cat(labels), 1.0, self.weights["background"])
        bce, dice = point_mask_losses(torch.cat(masks), torch.cat(targets), **self.point_loss)
        return {"loss_cls": self.weights["cls"] * cls, "loss_mask_bce": self.weights["bce"] * bce,
                "loss_mask_dice": self.weights["dice"] * dice}

    # ----- inference ----------------------------------------------------------------------------
    def _eval_prompts(self, sample: Sample):
        """One sample's prompts -> (sparse, dense embeddings, prompt boxes K×4 in the 1024 frame,
        the CLIP-branch boxes K×4, detector scores or None). Points follow ``point_rule``; the
        prompt boxes of point prompts are the GT boxes (the official CLIP branch pools those)."""
        det_scores = None
        official_points = self.detections is None and self.prompt == "point" and self.point_rule == "official"
        if self.detections is not None:
            boxes, det_scores = self.detections(sample.meta.get("image_id", sample.index))
            prompts = {"boxes": boxes}
        elif official_points:  # integer pixels of the 1024 frame already
            prompts = {"points": official_center_points(sample.masks, self.sam.input_size(sample.size),
                                                        self.sam.KEEPS_ASPECT)}
        else:
            prompts = gt_prompts(sample, self.prompt)
        if next(iter(prompts.values())).shape[0] == 0:
            return None, None, None, None, det_scores
        if official_points:
            sparse, dense = self.prompt_embeddings(points=prompts["points"][:, 0].to(self.sam.device))
        else:
            sparse, dense = self.sam.encode_prompts(sample.size, **prompts)
        original = prompts["boxes"] if "boxes" in prompts else gt_prompts(sample, "box")["boxes"]
        original = original.to(self.sam.device, torch.float)
        frame = self.sam.scale_boxes(original, sample.size)
        clip_boxes = original if self.clip_box_frame == "original" and self.detections is None else frame
        return sparse, dense, frame, clip_boxes, det_scores

    def _mask_boxes(self, low_res: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
        """Box (1024 frame) of each predicted mask (sigmoid > 0.5 on the 256² logits, ×4, x2/y2
        exclusive as mmdet's ``mask2bbox``); an empty mask gets its ``fallback`` row (K×4)."""
        boxes = mask_boxes(low_res[:, 0] > 0) * (self.sam.image_size / low_res.shape[-1])
        empty = (low_res[:, 0] > 0).flatten(1).sum(1) == 0
        return torch.where(empty[:, None], fallback.to(boxes.dtype), boxes)

    def _empty_mask_fallback(self, sample: Sample, prompt_boxes: torch.Tensor) -> torch.Tensor:
        """K×4 RoIs for empty predicted masks: zeros (official, ``empty_mask_roi=zero``), or the
        prompt box / for points the whole image (``prompt``)."""
        if self.empty_mask_roi == "zero":
            return torch.zeros_like(prompt_boxes)
        if self.prompt == "point" and self.detections is None:
            h, w = self.sam.input_size(sample.size)
            return prompt_boxes.new_tensor([[0.0, 0.0, w, h]]).expand(len(prompt_boxes), 4)
        return prompt_boxes

    @torch.no_grad()
    def predict(self, batch: Batch) -> list[Prediction]:
        predictions = []
        for sample in batch:
            text = self.texts(sample.class_names, sample.meta.get("synonym_lists"))
            sparse, dense, prompt_boxes, clip_boxes, det_scores = self._eval_prompts(sample)
            if sparse is None:
                predictions.append(self._empty_prediction(sample, det_scores is not None))
                continue
            embedding, stages, fpn = self.image_features(eval_pixels(self.sam, sample.image, self.image_resize))
            low_res, token_out = self.decode(embedding, sparse, dense)
            zeros = prompt_boxes.new_zeros(len(prompt_boxes), 1)
            rois = torch.cat([zeros, self._mask_boxes(low_res, self._empty_mask_fallback(sample, prompt_boxes))], dim=1)
            q = self.class_logits(fpn, rois, token_out, text)
            clip_rois = torch.cat([zeros, rois[:, 1:] if self.clip_rois == "mask_box" else clip_boxes], dim=1)
            labels, scores = self._labels(q, stages[3], clip_rois, text, sample, clip_valid(low_res, stages[3]))
            masks = self.sam.postprocess(low_res, sample.size)[:, 0] > self.sam.mask_threshold
            predictions.append(self._prediction(sample, masks.cpu(), labels.cpu(), scores.float().cpu(), det_scores))
        return predictions

    def _labels(self, q: torch.Tensor, layer4: torch.Tensor, clip_rois: torch.Tensor, text: torch.Tensor,
                sample: Sample, valid: torch.Tensor | None = None):
        """(labels K, scores K): argmax over the classes (never background) of the ensemble (or of
        q). ``clip_rois`` K×5 feed the frozen-CLIP branch; rows with ``valid`` False keep q alone."""
        if not self.ensemble:
            probs = q.float().softmax(-1)[:, :-1]
        else:
            novel = torch.as_tensor(sample.meta.get("novel") or [False] * (q.shape[1] - 1), dtype=torch.bool)
            probs = geometric_ensemble(q, self.clip_logits(layer4, clip_rois, text), novel, self.alpha, self.beta,
                                       valid=valid)
        scores, labels = probs.max(dim=-1)
        return labels, scores

    def _prediction(self, sample, masks, labels, scores, det_scores) -> Prediction:
        if det_scores is None:
            return Prediction(index=sample.index, masks=masks, class_ids=labels, scores=scores,
                              **instance_outputs(sample, labels, scores))
        boxes = self.detections(sample.meta.get("image_id", sample.index))[0].tolist()
        detections = [Detection(bbox=b, score=float(d * s), class_id=int(c), mask=m)
                      for b, d, s, c, m in zip(boxes, det_scores.tolist(), scores.tolist(), labels.tolist(), masks)]
        return Prediction(index=sample.index, detections=detections)

    def _empty_prediction(self, sample: Sample, detections: bool) -> Prediction:
        if detections:
            return Prediction(index=sample.index, detections=[])
        return Prediction(index=sample.index, masks=torch.zeros(0, *sample.size, dtype=torch.bool),
                          class_ids=torch.zeros(0, dtype=torch.long), scores=torch.zeros(0))


register_preset(
    METHODS, "ovsam", Clip2Sam,
    doc="Open-Vocabulary SAM inference with both stages (the same model as ``clip2sam``; its config asks for both "
        "stages' weights: ``method.sam2clip_checkpoint`` and ``method.clip2sam_checkpoint``).",
)
