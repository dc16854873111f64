"""Base class of every dataset adapter, safe file access inside a dataset root, and the one
place where image, mask and label-map files are decoded.

Every file read here is checked before its pixels are decoded, and every way it can be bad
becomes a one-line :class:`~sambench.errors.DatasetError` naming the file:

- **Size.** A header claiming more than ``max_image_pixels`` pixels (top-level config key,
  default :data:`DEFAULT_MAX_IMAGE_PIXELS` = 200 megapixels, the largest camera photos; ``null`` =
  no limit) is refused before anything is allocated (a 30000×30000 PNG header would need 2.7 GB).
  This check replaces PIL's own decompression-bomb check (switched off: it would refuse above
  179 MP with a traceback whatever the knob says).
- **Pixel formats.** Photos (:func:`read_image`) come out as H×W×3 uint8 RGB: 16-bit grayscale is
  scaled to 8 bits (``round(v / 257)``; PIL already keeps the high byte of 16-bit RGB), palette,
  grayscale, 1-bit and CMYK images are converted, an alpha channel is dropped (the colour
  channels are used as stored, as OpenCV and torchvision read them), and 32-bit integer or
  float images are refused (no scale is implied). Label maps (:func:`read_label_png`) keep
  their indices (8-bit, 16-bit or 32-bit integers; the adapters check the range). Binary or
  colour masks (:func:`read_mask_rgb`) clip 16-bit values to 255 instead of scaling them, so a
  0/1 16-bit mask keeps its foreground.
- **EXIF orientation.** Images are returned upright, as viewers and annotation tools show them
  (the EXIF orientation is applied as ``PIL.ImageOps.exif_transpose`` does), and masks or label
  maps that carry an orientation are turned the same way. One exception, by evidence: when the
  caller knows the size of the annotation grid (``expected_size``: a COCO image's
  ``height``/``width``, a mask's or label map's size) and it matches the stored pixels but not
  the upright ones, the annotations were made on the stored pixels, so those are returned.
- **Broken files.** Missing, empty, truncated or corrupt files, folders where a file is expected
  and unknown formats are refused.

Folders are scanned with :func:`walk_files`, which follows symlinked folders but enters each
real folder once (a ``loop -> .`` link would otherwise repeat every image ~40 times).
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from sambench.data.meta import DatasetMeta
from sambench.errors import ConfigError, DatasetError
from sambench.structures import Sample

if TYPE_CHECKING:
    from sambench.tasks import Task

logger = logging.getLogger(__name__)

#: Default pixel limit (``max_image_pixels``): 200 megapixels. The largest camera photos
#: (200-MP phone sensors, 16320×12240) still load, as do the benchmark images (at most ~12 MP);
#: a corrupt or hostile header (e.g. 30000×30000 = 900 MP, 2.7 GB as RGB) is refused.
DEFAULT_MAX_IMAGE_PIXELS = 200_000_000
_limit = {"pixels": DEFAULT_MAX_IMAGE_PIXELS}

#: EXIF orientation tag -> the PIL transpose that makes the image upright (as exif_transpose).
_EXIF_ORIENTATION = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES = (5, 6, 7, 8)
_WIDE_GRAY = ("I;16", "I;16L", "I;16B", "I;16N")
#: Errors PIL and its decoders raise for files that are not what they claim to be.
_DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, zlib.error, struct.error,
                  IndexError, TypeError, Image.DecompressionBombError)
_stored_pixels_reported = {"done": False}


def set_max_image_pixels(limit) -> None:
    """Set the pixel limit of every image, mask and label map read (``None`` = no limit).

    The composition root calls this with the top-level ``max_image_pixels`` config value. The
    readers here check the size in the header themselves, before decoding, so PIL's own
    decompression-bomb check (which would refuse above 179 MP with a traceback, whatever the
    knob says) is switched off: every image of a run is read through this module.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"max_image_pixels={limit!r}: expected a positive integer (pixels) or null (no limit)")
    _limit["pixels"] = limit
    Image.MAX_IMAGE_PIXELS = None


def max_image_pixels() -> int | None:
    return _limit["pixels"]


set_max_image_pixels(DEFAULT_MAX_IMAGE_PIXELS)


class SambenchDataset(Dataset):
    """A map-style dataset returning :class:`~sambench.structures.Sample`.

    Subclasses set ``TASKS`` (:class:`~sambench.tasks.Task` objects) and ``class_names``, and
    implement ``__len__``/``__getitem__``; those with more facts for evaluators (novel classes,
    a ground-truth file, an ignore label) override :attr:`dataset_meta`.
    """

    TASKS: tuple[Task, ...] = ()
    class_names: list[str] = []

    @property
    def dataset_meta(self) -> DatasetMeta:
        """What the composition root passes to the method and the evaluator."""
        return DatasetMeta(class_names=tuple(self.class_names))

    def __getitem__(self, index: int) -> Sample:  # pragma: no cover - abstract
        raise NotImplementedError


def check_int(dataset: str, option: str, value: Any, minimum: int | None, allow_none: bool) -> None:
    """ConfigError naming ``dataset.option`` unless ``value`` is an int (>= ``minimum``; None if allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        null = " or null" if allow_none else ""
        raise ConfigError(f"dataset '{dataset}': {option} must be an integer{bound}{null}, got {value!r}")


def resolve_root(root: str | None, dataset: str, hint: str) -> Path:
    """Check that a dataset root exists; ``hint`` says what the folder should contain."""
    if not root:
        raise DatasetError(f"dataset '{dataset}' needs dataset.root=<folder> ({hint})")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatasetError(f"dataset root not found: {path} (expected {hint})")
    return path.resolve()


def inside_root(root: Path, relative: str) -> Path:
    """Join ``relative`` to ``root``, refusing absolute paths and ``..`` escapes.

    The check is lexical: names taken from annotation files cannot leave the root, while
    symlinks the user placed inside it (e.g. ``root/val2017 -> /big/disk/val2017``) work.
    """
    path = Path(os.path.normpath(root / relative))
    if path != root and root not in path.parents:
        raise DatasetError(f"path escapes the dataset root {root}: '{relative}'")
    return path


# --------------------------------------------------------------------------- folder walking


def walk_files(folder: Path, accept) -> list[Path]:
    """Files under ``folder`` (recursively) whose name ``accept(name)`` keeps, sorted; hidden
    files are skipped.

    Symlinked folders are followed (a user may link ``city -> /big/disk/city``), but a folder is
    entered at most once, by its real path: a link loop (``loop -> .``) or a second link to an
    already scanned folder is skipped, and one warning line counts them.
    """
    found: list[Path] = []
    seen: set[str] = set()
    skipped: list[str] = []
    def refuse(error: OSError) -> None:  # os.walk would skip an unreadable folder silently
        raise DatasetError(f"cannot list folder {error.filename} ({error.strerror or error}); its images would be missed")

    for current, dirs, files in os.walk(folder, followlinks=True, onerror=refuse):
        real = os.path.realpath(current)
        if real in seen:  # reached again through a link: do not list it (nor descend) twice
            skipped.append(current)
            dirs[:] = []
            continue
        seen.add(real)
        keep = []
        for name in sorted(dirs):
            if os.path.realpath(os.path.join(current, name)) in seen:
                skipped.append(os.path.join(current, name))
            else:
                keep.append(name)
        dirs[:] = keep
        found += [Path(current) / name for name in files if accept(name) and not name.startswith(".")]
    if skipped:
        first = skipped[0]
        logger.warning(
            "%s: skipped %d folder link(s) leading to a folder already scanned (first: %s -> %s); "
            "each folder is read once", folder, len(skipped), first, os.path.realpath(first),
        )
    return sorted(found)


# --------------------------------------------------------------------------- image files


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation 1..8 of an opened image (1 when absent, invalid or unreadable)."""
    try:
        value = img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # corrupt EXIF metadata must not make valid pixels unreadable
        return 1
    return value if isinstance(value, int) and value in range(1, 9) else 1


def file_orientation(path: Path) -> int:
    """The EXIF orientation of an image file (1 when absent or unreadable); reads the header only."""
    try:
        with Image.open(path) as img:
            return exif_orientation(img)
    except Exception:
        return 1


def upright_size(stored: tuple[int, int], orientation: int) -> tuple[int, int]:
    """(H, W) of a stored (H, W) image once its EXIF orientation is applied."""
    return (stored[1], stored[0]) if orientation in _SWAPS_AXES else stored


def _decode(path: Path, what: str, convert: Callable[[Image.Image], np.ndarray],
            expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """Open ``path``, check its pixel count from the header, decode it, apply the EXIF
    orientation and return ``convert(image)``; every failure is a DatasetError naming the file."""
    path = Path(path)
    limit = max_image_pixels()
    try:
        img = Image.open(path)
    except FileNotFoundError:
        raise DatasetError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise DatasetError(f"{what} {path} is a folder; expected an image file") from None
    except Image.DecompressionBombError:  # only if someone re-enabled PIL's limit
        raise DatasetError(_too_large(path, what, None, limit)) from None
    except _DECODE_ERRORS as exc:
        raise DatasetError(_unreadable(path, what, exc)) from None
    with img:
        width, height = img.size
        if width < 1 or height < 1:
            raise DatasetError(f"{what} {path} is {width}x{height} pixels; expected a non-empty image")
        if limit is not None and width * height > limit:
            raise DatasetError(_too_large(path, what, (width, height), limit))
        try:
            img.load()
            orientation = exif_orientation(img)
            if orientation != 1 and expected_size is not None:
                stored = (height, width)
                if tuple(expected_size) == stored and upright_size(stored, orientation) != stored:
                    _report_stored_pixels(path, orientation, expected_size)
                    orientation = 1
            if orientation == 1:
                return convert(img)
            upright = img.transpose(_TRANSPOSE[orientation])
            upright.format = img.format  # the converters look at it (16-bit PNGs)
            return convert(upright)
        except DatasetError:
            raise
        except _DECODE_ERRORS as exc:
            raise DatasetError(_unreadable(path, what, exc)) from None


def _too_large(path: Path, what: str, size, limit) -> str:
    claimed = f"is {size[0]}x{size[1]} = {size[0] * size[1] / 1e6:.1f} megapixels" if size else "claims too many pixels"
    return (
        f"{what} {path} {claimed}, over the limit max_image_pixels={limit} "
        f"({limit / 1e6:g} MP); a corrupt or hostile header is likely — if the file is genuine, "
        f"raise max_image_pixels=<pixels> (or null for no limit)"
    )


def _unreadable(path: Path, what: str, exc: BaseException) -> str:
    try:
        size = path.stat().st_size
    except OSError:
        size = None
    if size == 0:
        return f"cannot read {what} {path}: the file is empty (expected a JPEG/PNG file)"
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"cannot read {what} {path}: expected a complete JPEG/PNG file ({detail})"


def _report_stored_pixels(path: Path, orientation: int, expected_size) -> None:
    if not _stored_pixels_reported["done"]:
        _stored_pixels_reported["done"] = True
        logger.warning(
            "%s has EXIF orientation %d, but its annotations are %dx%d, the size of the stored pixels: read as "
            "stored, without turning it (further such images are not reported)", path, orientation, *expected_size,
        )


def read_image(path: Path, *, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a photo as H×W×3 uint8 RGB, upright (EXIF orientation applied; see the module
    docstring for ``expected_size``, the pixel formats and the size limit)."""
    return _decode(path, "image", lambda img: _photo_rgb(img, path), expected_size)


def _photo_rgb(img: Image.Image, path: Path) -> np.ndarray:
    mode = img.mode
    if mode == "RGB":
        return np.array(img, dtype=np.uint8)
    if mode in _WIDE_GRAY or (mode == "I" and img.format == "PNG"):
        values = np.asarray(img).astype(np.uint32)
        if mode == "I" and values.size and int(values.max()) > 65535:
            raise DatasetError(f"image {path} holds values above 65535; expected an 8- or 16-bit PNG")
        gray = ((values * 255 + 32767) // 65535).astype(np.uint8)  # round(v / 257): 65535 -> 255
        return np.repeat(gray[..., None], 3, axis=-1)
    if mode in ("I", "F"):
        kind = "32-bit integer" if mode == "I" else "32-bit float"
        raise DatasetError(
            f"image {path} has {kind} pixels (PIL mode {mode}), which have no implied 8-bit scale; "
            f"expected an 8- or 16-bit RGB, grayscale or palette image (convert it to 8-bit RGB)"
        )
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # palette transparency: via RGBA (PIL warns otherwise), alpha dropped
    try:
        return np.array(img.convert("RGB"), dtype=np.uint8)
    except _DECODE_ERRORS as exc:
        raise DatasetError(f"cannot convert image {path} (PIL mode {mode}) to RGB ({exc})") from None


def read_mask_rgb(path: Path, *, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a binary or colour mask as H×W×3 uint8 (as PerSAM reads it in colour): like
    :func:`read_image`, except that 16-bit or 32-bit integer values are clipped to 255, not
    scaled, so any non-zero value stays foreground."""
    return _decode(path, "mask", lambda img: _mask_rgb(img, path), expected_size)


def _mask_rgb(img: Image.Image, path: Path) -> np.ndarray:
    if img.mode in _WIDE_GRAY or img.mode == "I":
        values = np.asarray(img).astype(np.int64)
        if values.size and int(values.min()) < 0:
            raise DatasetError(f"mask {path} holds negative values; expected a 0/1, 0/255 or palette mask")
        gray = np.clip(values, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    if img.mode == "F":
        raise DatasetError(f"mask {path} has 32-bit float pixels (PIL mode F); expected a 0/1, 0/255 or palette PNG")
    return _photo_rgb(img, path)


#: PIL modes of single-channel label maps (indices, read without conversion).
LABEL_MODES = ("L", "P", "1", "I", *_WIDE_GRAY)


def read_label_png(path: Path, *, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a single-channel label map (L, palette P, 1-bit, 16- or 32-bit integer) as its H×W
    indices, without any colour conversion (``uint8``, or a wider integer type for 16/32-bit
    files: callers check the value range). An EXIF orientation, rare in PNGs, is applied."""
    return _decode(path, "label map", lambda img: _label_indices(img, path), expected_size)


def _label_indices(img: Image.Image, path: Path) -> np.ndarray:
    if img.mode not in LABEL_MODES:
        raise DatasetError(
            f"label map {path} has mode {img.mode}; expected a single-channel PNG of class indices "
            f"(8-bit L or palette P; 16-bit is accepted when its values fit the classes)"
        )
    labels = np.array(img)
    return labels.astype(np.uint8) if labels.dtype == bool else labels


def read_image_for(image_path: Path, annotation_path: Path, annotation: np.ndarray, what: str = "mask") -> np.ndarray:
    """The image (H×W×3 uint8 RGB) of an annotation already read (``annotation`` H×W or H×W×C,
    from ``annotation_path``): upright, or as stored when the annotation has the stored pixels'
    size (``expected_size`` of :func:`read_image`); a size that still differs is a DatasetError
    naming both files (``what``: the annotation's kind in the message)."""
    size = tuple(annotation.shape[:2])
    image = read_image(image_path, expected_size=size)
    if size != image.shape[:2]:
        raise DatasetError(
            f"{what} {annotation_path} is {size[0]}x{size[1]} but image {image_path} is "
            f"{image.shape[0]}x{image.shape[1]} (expected the same size)"
            f"{size_mismatch_hint(image_path, image.shape[:2], size)}"
        )
    return image


def size_mismatch_hint(path: Path, actual: tuple[int, int], other: tuple[int, int]) -> str:
    """`` (the image has EXIF orientation 6: stored as 40x100, read upright as 100x40)`` when the
    EXIF orientation of ``path`` explains why its (H, W) ``actual`` differs from ``other``; else ''."""
    orientation = file_orientation(path)
    if orientation in _SWAPS_AXES and tuple(other) == (actual[1], actual[0]):
        return (
            f" (its EXIF orientation {orientation} turns the stored {other[0]}x{other[1]} pixels upright to "
            f"{actual[0]}x{actual[1]}, while the annotations match the stored pixels: strip the EXIF orientation "
            f"tag, e.g. `exiftool -Orientation= <file>`, or turn the annotations upright)"
        )
    return ""


