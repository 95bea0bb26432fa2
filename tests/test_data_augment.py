"""The reference RandomGenerator (each branch pinned against explicit SciPy calls) and the batched torch path
(checked against the reference pipeline with the same choices)."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch
from scipy import ndimage

from organseg.data.augment import (
    NONE,
    ROT_FLIP,
    ROTATE,
    AugmentCollate,
    BatchAugment,
    RandomGenerator,
    SliceDataset,
    collate_slices,
    reference_transform,
    resize_slice,
)


def _slice(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = ndimage.gaussian_filter(rng.random((h, w)), 1.5).astype(np.float32)
    label = (rng.random((h, w)) * 9).astype(np.int64)
    return image, label


def _seed_for(branch: int) -> int:
    """A Python `random` seed whose first draws pick ``branch`` in the reference's if/elif."""
    for s in range(1000):
        random.seed(s)
        u1, u2 = random.random(), random.random()
        got = ROT_FLIP if u1 > 0.5 else (ROTATE if u2 > 0.5 else NONE)
        if got == branch:
            return s
    raise AssertionError("no seed found")


def _run_reference(image, label, branch, np_seed, size):
    random.seed(_seed_for(branch))
    np.random.seed(np_seed)
    return RandomGenerator(size)(image, label)


@pytest.mark.parametrize("np_seed", [0, 1, 2, 3])
def test_random_generator_rot_flip_branch_is_pinned(np_seed):
    image, label = _slice(40, 56)
    out_img, out_lab = _run_reference(image, label, ROT_FLIP, np_seed, (32, 32))
    np.random.seed(np_seed)
    k, axis = np.random.randint(0, 4), np.random.randint(0, 2)
    exp_img = np.flip(np.rot90(image, k), axis=axis)
    exp_lab = np.flip(np.rot90(label, k), axis=axis)
    h, w = exp_img.shape
    exp_img = ndimage.zoom(exp_img, (32 / h, 32 / w), order=3)
    exp_lab = ndimage.zoom(exp_lab, (32 / h, 32 / w), order=0)
    assert out_img.shape == (1, 32, 32) and out_img.dtype == torch.float32
    assert out_lab.shape == (32, 32) and out_lab.dtype == torch.int64
    assert np.array_equal(out_img[0].numpy(), exp_img.astype(np.float32))
    assert np.array_equal(out_lab.numpy(), exp_lab)


@pytest.mark.parametrize("np_seed", [0, 5])
def test_random_generator_rotate_branch_is_pinned(np_seed):
    image, label = _slice(40, 56)
    out_img, out_lab = _run_reference(image, label, ROTATE, np_seed, (32, 32))
    np.random.seed(np_seed)
    angle = np.random.randint(-20, 20)
    exp_img = ndimage.rotate(image, angle, order=0, reshape=False)
    exp_lab = ndimage.rotate(label, angle, order=0, reshape=False)
    exp_img = ndimage.zoom(exp_img, (32 / 40, 32 / 56), order=3)
    exp_lab = ndimage.zoom(exp_lab, (32 / 40, 32 / 56), order=0)
    assert np.array_equal(out_img[0].numpy(), exp_img)
    assert np.array_equal(out_lab.numpy(), exp_lab)


def test_random_generator_no_aug_branch_only_zooms_and_leaves_numpy_rng_untouched():
    image, label = _slice(40, 56)
    np.random.seed(7)
    state = np.random.get_state()[1].copy()
    random.seed(_seed_for(NONE))
    out_img, out_lab = RandomGenerator((32, 32))(image, label)
    assert np.array_equal(np.random.get_state()[1], state)  # no np.random draw in this branch
    assert np.array_equal(out_img[0].numpy(), ndimage.zoom(image, (32 / 40, 32 / 56), order=3))
    assert np.array_equal(out_lab.numpy(), ndimage.zoom(label, (32 / 40, 32 / 56), order=0))


def test_random_generator_skips_zoom_at_output_size_and_branch_frequencies():
    image, label = _slice(24, 24)
    random.seed(_seed_for(NONE))
    out_img, out_lab = RandomGenerator((24, 24))(image, label)
    assert np.array_equal(out_img[0].numpy(), image) and np.array_equal(out_lab.numpy(), label)
    # branch probabilities .5 / .25 / .25 over the reference draws
    random.seed(0)
    counts = np.zeros(3)
    for _ in range(4000):
        counts[ROT_FLIP if random.random() > 0.5 else (ROTATE if random.random() > 0.5 else NONE)] += 1
    assert np.allclose(counts / counts.sum(), [0.25, 0.5, 0.25], atol=0.03)


def test_resize_slice():
    image, label = _slice(50, 30)
    img, lab = resize_slice(image, label, (20, 20))
    assert img.dtype == np.float32 and lab.dtype == np.int64 and img.shape == lab.shape == (20, 20)
    assert np.array_equal(img, ndimage.zoom(image, (20 / 50, 20 / 30), order=3))
    img2, none = resize_slice(image, None, (50, 30))
    assert none is None and np.array_equal(img2, image)


def test_reference_zoom_quirk_is_kept():
    """SciPy's 512 -> 224 zoom puts 0 on the last row and column (float rounding of the coordinate): the
    reference trains with it, and so do both of our paths."""
    image = np.ones((512, 512), np.float32)
    label = np.ones((512, 512), np.int64)
    ref_img, ref_lab = reference_transform(image, label, NONE)
    assert (
        ref_img[-1].max() == 0 and ref_img[:, -1].max() == 0 and ref_img[:-1, :-1].min() == pytest.approx(1)
    )
    out_img, out_lab = BatchAugment((224, 224)).apply(
        torch.from_numpy(image)[None, None],
        torch.from_numpy(label)[None],
        {
            "branch": torch.tensor([NONE]),
            "k": torch.tensor([0]),
            "axis": torch.tensor([0]),
            "angle": torch.tensor([0]),
        },
    )
    assert np.array_equal(out_lab[0].numpy(), ref_lab)
    assert np.allclose(out_img[0, 0].numpy(), ref_img, atol=1e-5)


CASES = (
    [(NONE, 0, 0, 0)]
    + [(ROT_FLIP, k, a, 0) for k in range(4) for a in range(2)]
    + [(ROTATE, 0, 0, ang) for ang in (-20, -7, 0, 1, 13, 19)]
)


@pytest.mark.parametrize("shape", [(96, 96), (120, 88), (40, 56)])
def test_batch_augment_equals_reference_for_every_choice(shape):
    n = len(CASES)
    pairs = [_slice(*shape, seed=i) for i in range(n)]
    params = {
        key: torch.tensor([c[j] for c in CASES]) for j, key in enumerate(("branch", "k", "axis", "angle"))
    }
    images = torch.stack([torch.from_numpy(p[0]) for p in pairs])[:, None]
    labels = torch.stack([torch.from_numpy(p[1]) for p in pairs])
    out_img, out_lab = BatchAugment((64, 64)).apply(images, labels, params)
    assert out_img.shape == (n, 1, 64, 64) and out_img.dtype == torch.float32
    assert out_lab.shape == (n, 64, 64) and out_lab.dtype == torch.int64
    for i, (b, k, a, ang) in enumerate(CASES):
        ref_img, ref_lab = reference_transform(pairs[i][0], pairs[i][1], b, k, a, ang, (64, 64))
        assert np.array_equal(out_lab[i].numpy(), ref_lab), (b, k, a, ang)
        assert np.abs(out_img[i, 0].numpy() - ref_img).max() < 1e-5, (b, k, a, ang)


def test_batch_augment_mixed_sizes_from_a_list():
    shapes = [(40, 56), (56, 40), (40, 56), (64, 64)]
    pairs = [_slice(*s, seed=i) for i, s in enumerate(shapes)]
    params = {
        "branch": torch.tensor([ROT_FLIP, ROTATE, NONE, ROT_FLIP]),
        "k": torch.tensor([1, 0, 0, 3]),
        "axis": torch.tensor([0, 0, 0, 1]),
        "angle": torch.tensor([0, -11, 0, 0]),
    }
    out_img, out_lab = BatchAugment((32, 32)).apply([p[0] for p in pairs], [p[1] for p in pairs], params)
    assert out_img.shape == (4, 1, 32, 32)
    for i, p in enumerate(pairs):
        ref_img, ref_lab = reference_transform(
            p[0], p[1], *(int(params[k][i]) for k in ("branch", "k", "axis", "angle")), (32, 32)
        )
        assert np.array_equal(out_lab[i].numpy(), ref_lab)
        assert np.abs(out_img[i, 0].numpy() - ref_img).max() < 1e-5


def test_batch_augment_distribution_and_generator_determinism():
    aug = BatchAugment((32, 32))
    p = aug.sample_params(20000, torch.Generator().manual_seed(0))
    freq = torch.bincount(p["branch"], minlength=3).double() / 20000
    assert torch.allclose(freq, torch.tensor([0.25, 0.5, 0.25], dtype=torch.float64), atol=0.015)
    assert set(p["k"].tolist()) == {0, 1, 2, 3} and set(p["axis"].tolist()) == {0, 1}
    assert p["angle"].min() == -20 and p["angle"].max() == 19
    image, label = _slice(40, 56)
    x = torch.from_numpy(image)[None, None].repeat(6, 1, 1, 1)
    y = torch.from_numpy(label)[None].repeat(6, 1, 1)
    a = aug(x, y, torch.Generator().manual_seed(3))
    b = aug(x, y, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    off = BatchAugment((32, 32), p_rot_flip=0.0, p_rotate=0.0).sample_params(100)
    assert (off["branch"] == NONE).all()


def test_batch_augment_rejects_bad_shapes():
    aug = BatchAugment((16, 16))
    with pytest.raises(ValueError, match="one channel"):
        aug(torch.zeros(2, 3, 8, 8), torch.zeros(2, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="label shape"):
        aug([np.zeros((8, 8))], [np.zeros((8, 9))])


def test_dataloader_glue_collate_and_workers():
    pairs = [_slice(40, 56, seed=i) for i in range(5)] + [_slice(30, 30, seed=9)]
    ds = SliceDataset(pairs)
    img, lab = ds[0]
    assert img.shape == (1, 40, 56) and lab.dtype == torch.int64
    stacked = collate_slices([ds[i] for i in range(3)])
    assert isinstance(stacked[0], torch.Tensor) and stacked[0].shape == (3, 1, 40, 56)
    mixed = collate_slices([ds[0], ds[5]])
    assert isinstance(mixed[0], list)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=AugmentCollate((32, 32)))
    batches = list(loader)
    assert [b[0].shape for b in batches] == [(3, 1, 32, 32)] * 2
    assert pickle.loads(pickle.dumps(AugmentCollate((32, 32)))).augment.output_size == (32, 32)
    ref = SliceDataset(pairs, RandomGenerator((32, 32)))
    assert ref[1][0].shape == (1, 32, 32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_batch_augment_on_gpu_matches_cpu():
    pairs = [_slice(96, 80, seed=i) for i in range(len(CASES))]
    params = {
        key: torch.tensor([c[j] for c in CASES]) for j, key in enumerate(("branch", "k", "axis", "angle"))
    }
    x = torch.stack([torch.from_numpy(p[0]) for p in pairs])[:, None]
    y = torch.stack([torch.from_numpy(p[1]) for p in pairs])
    cpu = BatchAugment((64, 64)).apply(x, y, params)
    gpu = BatchAugment((64, 64)).apply(x.cuda(), y.cuda(), params)
    assert torch.equal(cpu[1], gpu[1].cpu())
    assert torch.allclose(cpu[0], gpu[0].cpu(), atol=1e-4)


def test_batch_rotation_matches_scipy_for_every_angle():
    rng = np.random.default_rng(1)
    angles = list(range(-20, 20))
    n = len(angles)
    images = rng.random((n, 37, 45)).astype(np.float32)
    labels = rng.integers(0, 9, (n, 37, 45))
    params = {
        "branch": torch.full((n,), ROTATE),
        "k": torch.zeros(n, dtype=torch.long),
        "axis": torch.zeros(n, dtype=torch.long),
        "angle": torch.tensor(angles),
    }
    out_img, out_lab = BatchAugment((32, 32)).apply(
        torch.from_numpy(images), torch.from_numpy(labels), params
    )
    for i, angle in enumerate(angles):
        ref_img, ref_lab = reference_transform(
            images[i], labels[i], ROTATE, angle=angle, output_size=(32, 32)
        )
        assert np.array_equal(out_lab[i].numpy(), ref_lab), angle
        assert np.abs(out_img[i, 0].numpy() - ref_img).max() < 2e-5, angle
