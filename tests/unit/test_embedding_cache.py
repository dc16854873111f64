"""EmbeddingCache on its own and through SamBackbone.embed_images: exact hits, counters, keys
per image and per weights, corrupt entries treated as misses, concurrent writers (spawned
processes) leaving only complete files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as tmp_mp

from sambench.testing import TINY_SAM

from sambench.cache import EmbeddingCache


def make_image(shape=(60, 80), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(*shape, 3), dtype=np.uint8)


def backbone(cache_dir, **overrides):
    from sambench.backbones.sam import SamBackbone  # imported lazily: spawned workers skip it

    return SamBackbone(**{**TINY_SAM, **overrides}, cache_dir=None if cache_dir is None else str(cache_dir))


def all_files(root: Path) -> list[Path]:
    """Every file of the cache folder but its shape record (``entry.json``)."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != "entry.json")


@pytest.fixture(scope="module")
def image():
    return make_image(seed=1)


@pytest.fixture(scope="module")
def reference(image):
    """The embedding of ``image`` computed without any cache (seed-0 tiny SAM)."""
    model = backbone(None)
    with torch.no_grad():
        return model.encode(model.preprocess(image))[0].float()


# ----- the cache object ------------------------------------------------------------------------
def test_put_get_round_trip_and_layout(tmp_path):
    cache = EmbeddingCache(tmp_path, "ns")
    key = hashlib.sha256(b"x").hexdigest()
    assert cache.get(key) is None
    assert (cache.hits, cache.misses) == (0, 1)
    assert not (tmp_path / "ns").exists()  # nothing is created by a read

    value = torch.randn(256, 64, 64, dtype=torch.float64)[:, ::2, ::2]  # not float32, not contiguous
    cache.put(key, value)
    assert cache.path(key) == tmp_path / "ns" / key[:2] / f"{key}.pt"
    assert all_files(tmp_path) == [cache.path(key)]
    got = cache.get(key)
    assert (cache.hits, cache.misses) == (1, 1)
    assert got.dtype == torch.float32 and got.device.type == "cpu" and got.is_contiguous()
    assert torch.equal(got, value.float())


def test_put_stores_a_copy_not_a_view(tmp_path):
    cache = EmbeddingCache(tmp_path, "ns")
    big = torch.zeros(10, 256, 8, 8)
    cache.put("ab" * 32, big[3])
    # a saved view of a larger storage would write (and read back) all of it
    assert cache.path("ab" * 32).stat().st_size < big.numel() * 4 / 5
    assert cache.get("ab" * 32).shape == (256, 8, 8)


def test_image_key():
    img = make_image((30, 40), seed=3)
    key = EmbeddingCache.image_key(img)
    assert key == EmbeddingCache.image_key(img.copy())
    assert len(key) == 64 and int(key, 16) >= 0
    changed = img.copy()
    changed[29, 39, 2] ^= 1  # one bit of one pixel
    assert EmbeddingCache.image_key(changed) != key
    # same bytes, another shape
    assert EmbeddingCache.image_key(img.reshape(40, 30, 3)) != key
    # a non-contiguous view hashes as its contiguous copy
    wide = make_image((30, 80), seed=4)
    assert EmbeddingCache.image_key(wide[:, ::2]) == EmbeddingCache.image_key(np.ascontiguousarray(wide[:, ::2]))


# ----- through the backbone ----------------------------------------------------------------------
def test_hit_is_identical_to_computed_and_first_call(tmp_path, image, reference):
    model = backbone(tmp_path)
    first = model.embed_images([image]).embedding
    assert (model.cache.hits, model.cache.misses) == (0, 1)
    assert torch.equal(first[0], reference)
    file = model.cache.path(EmbeddingCache.image_key(image))
    assert file.is_file()

    second = model.embed_images([image]).embedding
    assert (model.cache.hits, model.cache.misses) == (1, 1)
    assert torch.equal(second, first)

    # a new backbone (e.g. the next run) reads it from disk
    again = backbone(tmp_path)
    third = again.embed_images([image]).embedding
    assert (again.cache.hits, again.cache.misses) == (1, 0)
    assert torch.equal(third, first)


def test_hit_is_served_from_disk_not_recomputed(tmp_path, image):
    model = backbone(tmp_path)
    sentinel = torch.full((256, 64, 64), 7.0)
    model.cache.put(EmbeddingCache.image_key(image), sentinel)
    out = model.embed_images([image]).embedding
    assert torch.equal(out[0], sentinel)
    assert (model.cache.hits, model.cache.misses) == (1, 0)


def test_mixed_batch_keeps_order_and_counts(tmp_path, image, reference):
    model = backbone(tmp_path)
    model.cache.put(EmbeddingCache.image_key(image), reference)
    other = make_image(seed=2)
    out = model.embed_images([other, image]).embedding
    assert (model.cache.hits, model.cache.misses) == (1, 1)
    assert torch.equal(out[1], reference)
    assert not torch.allclose(out[0], out[1])
    assert len(all_files(model.cache.folder)) == 2
    swapped = model.embed_images([image, other]).embedding
    assert torch.equal(swapped, out.flip(0))
    assert (model.cache.hits, model.cache.misses) == (3, 1)


def test_different_images_different_entries(tmp_path, image, reference):
    model = backbone(tmp_path)
    model.cache.put(EmbeddingCache.image_key(image), reference)
    changed = image.copy()
    changed[0, 0, 0] ^= 1
    assert EmbeddingCache.image_key(image) != EmbeddingCache.image_key(changed)
    out = model.embed_images([changed]).embedding
    assert (model.cache.hits, model.cache.misses) == (0, 1)
    assert len(all_files(model.cache.folder)) == 2
    assert not torch.equal(out[0], reference)


def test_namespace_depends_on_weights_and_name(tmp_path):
    seed0, seed0_again = backbone(tmp_path), backbone(tmp_path)
    seed1 = backbone(tmp_path, init_seed=1)
    renamed = backbone(tmp_path, name="sam_tiny_b")
    assert seed0.cache.folder == seed0_again.cache.folder
    assert seed0.cache.folder.parent == tmp_path
    assert seed0.cache.folder.name.startswith("sam_tiny-")
    assert seed1.cache.folder != seed0.cache.folder
    assert renamed.cache.folder != seed0.cache.folder


def test_other_weights_do_not_reuse_entries(tmp_path, image, reference):
    seed0 = backbone(tmp_path)
    seed1 = backbone(tmp_path, init_seed=1)
    seed0.cache.put(EmbeddingCache.image_key(image), reference)
    e1 = seed1.embed_images([image]).embedding
    assert (seed1.cache.hits, seed1.cache.misses) == (0, 1)
    assert not torch.allclose(e1[0], reference)
    assert torch.equal(seed0.embed_images([image]).embedding[0], reference)  # seed 0's entry is untouched
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 2


def test_namespace_of_checkpointed_model_follows_file_content(tmp_path):
    from sambench.backbones.sam_checkpoint import build_sam_model

    files = []
    for seed in (1, 2):
        sam = build_sam_model("tiny", None, False, 32, 2, 2, [1], seed)
        files.append(tmp_path / f"tiny{seed}.pth")
        torch.save(sam.state_dict(), files[-1])
    a = backbone(tmp_path / "cache", checkpoint=str(files[0]))
    b = backbone(tmp_path / "cache", checkpoint=str(files[1]))
    a_again = backbone(tmp_path / "cache", checkpoint=str(files[0]))
    assert a.cache.folder != b.cache.folder
    assert a.cache.folder == a_again.cache.folder
    expected = hashlib.sha256(files[0].read_bytes()).hexdigest()[:16]
    assert a.cache.folder.name == f"sam_tiny-{expected}"


def _corrupt(file: Path, how: str) -> None:
    data = file.read_bytes()
    if how == "truncated":
        file.write_bytes(data[: len(data) // 2])
    elif how == "tail_cut":
        file.write_bytes(data[:-50])
    elif how == "empty":
        file.write_bytes(b"")
    elif how == "zeros":  # what a crash mid-write can leave on some file systems
        file.write_bytes(b"\x00" * len(data))
    elif how == "garbage":
        file.write_bytes(b"not a tensor file " * 100)
    elif how == "random_bytes":
        file.write_bytes(np.random.default_rng(0).integers(0, 256, len(data) // 4, dtype=np.uint8).tobytes())
    elif how == "not_a_tensor":  # a readable file holding something else
        torch.save({"embedding": [1, 2, 3]}, file)
    else:
        raise ValueError(how)


CORRUPTIONS = ["truncated", "tail_cut", "empty", "zeros", "garbage", "random_bytes", "not_a_tensor"]


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_corrupt_entry_reads_as_a_miss(tmp_path, how):
    cache = EmbeddingCache(tmp_path, "ns")
    key = "cd" * 32
    cache.put(key, torch.randn(256, 64, 64))
    _corrupt(cache.path(key), how)
    assert cache.get(key) is None
    assert (cache.hits, cache.misses) == (0, 1)
    cache.put(key, torch.ones(3))  # and it can be overwritten
    assert torch.equal(cache.get(key), torch.ones(3))


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_corrupt_entry_is_recomputed_and_rewritten(tmp_path, image, reference, how):
    model = backbone(tmp_path)
    file = model.cache.path(EmbeddingCache.image_key(image))
    model.cache.put(EmbeddingCache.image_key(image), reference)
    _corrupt(file, how)

    out = model.embed_images([image]).embedding
    assert (model.cache.hits, model.cache.misses) == (0, 1)
    assert torch.equal(out[0], reference)
    # rewritten: loadable and equal, and the next call is a hit
    assert torch.equal(torch.load(file, map_location="cpu", weights_only=True), reference)
    assert torch.equal(model.embed_images([image]).embedding[0], reference)
    assert (model.cache.hits, model.cache.misses) == (1, 1)
    assert [p.name for p in all_files(tmp_path)] == [file.name]  # no temporary files left


def test_entry_of_the_wrong_shape_is_recomputed(tmp_path, image, reference):
    """An entry that loads but has another shape (or dtype) than the recorded one is corrupt:
    recomputed and rewritten, never stacked into a batch."""
    model = backbone(tmp_path)
    key = EmbeddingCache.image_key(image)
    model.cache.put(key, reference)
    assert model.cache.expected_shape() == tuple(reference.shape)
    torch.save(torch.zeros(256, 32, 32), model.cache.path(key))
    out = model.embed_images([image, image]).embedding
    assert out.shape == (2, *reference.shape) and torch.equal(out[0], reference)
    assert model.cache.corrupt >= 1
    torch.save(reference.double(), model.cache.path(key))
    fresh = backbone(tmp_path)
    assert fresh.cache.get(key) is None and fresh.cache.corrupt == 1


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"),
                                     RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos")])
def test_failed_cache_write_warns_once_and_continues(tmp_path, image, reference, monkeypatch, caplog, failure):
    model = backbone(tmp_path)

    def full_disk(obj, file, *args, **kwargs):
        raise failure

    monkeypatch.setattr(torch, "save", full_disk)
    with caplog.at_level("WARNING", logger="sambench.cache"):
        out = model.embed_images([image, image[::-1].copy()]).embedding
    assert torch.equal(out[0], reference)  # the evaluation goes on with computed embeddings
    warnings = [r for r in caplog.records if "continuing without caching" in r.getMessage()]
    assert len(warnings) == 1 and not model.cache.writable
    assert [p for p in all_files(tmp_path) if p.suffix == ".tmp"] == []


# ----- several processes ---------------------------------------------------------------------------
SHARED_KEY = hashlib.sha256(b"shared").hexdigest()
ROUNDS = 6
WORKERS = 3
SHAPE = (256, 64, 64)


def _own_key(worker: int, round_: int) -> str:
    return hashlib.sha256(f"own-{worker}-{round_}".encode()).hexdigest()


def _own_value(worker: int, round_: int) -> torch.Tensor:
    return torch.arange(np.prod(SHAPE), dtype=torch.float32).reshape(SHAPE) + 1000.0 * (10 * worker + round_)


def _writer(root: str, worker: int, barrier) -> None:
    """Spawned: write the shared key (own value) and own keys, read the shared key back."""
    torch.set_num_threads(1)
    cache = EmbeddingCache(root, "ns")
    shared = torch.full(SHAPE, float(worker))
    barrier.wait(timeout=120)
    for round_ in range(ROUNDS):
        cache.put(SHARED_KEY, shared)
        cache.put(_own_key(worker, round_), _own_value(worker, round_))
        got = cache.get(SHARED_KEY)
        # the file is always complete and written by exactly one worker
        if got is None or got.shape != SHAPE or got.unique().numel() != 1 or float(got[0, 0, 0]) not in (0, 1, 2):
            raise SystemExit(3)
    if cache.misses:
        raise SystemExit(4)


def test_concurrent_writers_leave_complete_files(tmp_path):
    ctx = tmp_mp.get_context("spawn")
    barrier = ctx.Barrier(WORKERS)
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, barrier)) for w in range(WORKERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    for p in procs:
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0] * WORKERS

    files = all_files(tmp_path)
    assert not [f for f in files if f.suffix == ".tmp" or f.name.startswith(".")]
    assert len(files) == 1 + WORKERS * ROUNDS
    cache = EmbeddingCache(tmp_path, "ns")
    shared = cache.get(SHARED_KEY)
    assert shared.shape == SHAPE and shared.unique().numel() == 1 and float(shared[0, 0, 0]) in (0, 1, 2)
    for worker in range(WORKERS):
        for round_ in range(ROUNDS):
            assert torch.equal(cache.get(_own_key(worker, round_)), _own_value(worker, round_))
    assert cache.misses == 0
