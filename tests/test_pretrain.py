"""``organseg pretrain`` (issue 26): SimMIM masks and loss, a tiny pretraining run end to end into ``train``'s
``model.pretrained``, bit-for-bit resume, and the sources it refuses."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from helpers import fraction_phantom, one_line_error
from organseg.checkpoint import read_checkpoint
from organseg.cli.main import main
from organseg.data.detect import open_dataset
from organseg.data.unlabeled import PretrainImages
from organseg.errors import ConfigError, DataError
from organseg.imageio.volumes import Geometry, write_image
from organseg.models import create_model
from organseg.models.pretrained import SIMMIM_FORMAT, load_pretrained
from organseg.training import list_presets, read_metrics, train
from organseg.training.pretrain import (
    ENCODER_FILE,
    LOSS_FIGURE,
    RECONSTRUCTION_FIGURE,
    SimMIM,
    list_pretrain_presets,
    load_pretrain_config,
    mask_count,
    masked_l1,
    pretrain,
    random_masks,
    resolve_pretrain_config,
    upsample_mask,
)

SWIN_ARGS = {"embed_dim": 12, "num_heads": [1, 2, 3, 4], "window_size": 2}
CFG = {
    "model": {"args": SWIN_ARGS},
    "train": {"img_size": 32, "batch_size": 4, "max_iterations": 5, "progress": False, "threads": 1},
    "pretrain": {"mask_patch_size": 8},
}


# ------------------------------------------------------------------------------------------- the method


@pytest.mark.parametrize(("grid", "ratio"), [((7, 7), 0.6), ((4, 4), 0.6), ((2, 2), 0.5), ((3, 5), 0.1)])
def test_masks_hide_exactly_ceil_ratio_of_the_cells(grid, ratio):
    masks = random_masks(16, grid, ratio, torch.Generator().manual_seed(0))
    want = int(np.ceil(grid[0] * grid[1] * ratio))
    assert masks.shape == (16, *grid) and masks.dtype == torch.bool
    assert masks.flatten(1).sum(1).tolist() == [want] * 16 == [mask_count(grid[0] * grid[1], ratio)] * 16
    assert len({tuple(m.flatten().tolist()) for m in masks}) > 1  # not the same cells in every slice


def test_masks_are_a_function_of_the_seed():
    a = random_masks(4, (7, 7), 0.6, torch.Generator().manual_seed(5))
    b = random_masks(4, (7, 7), 0.6, torch.Generator().manual_seed(5))
    c = random_masks(4, (7, 7), 0.6, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_the_loss_counts_masked_pixels_only():
    torch.manual_seed(0)
    target = torch.rand(2, 1, 16, 16)
    masks = random_masks(2, (2, 2), 0.5, torch.Generator().manual_seed(1))
    pixels = upsample_mask(masks, 8)
    recon = torch.rand(2, 1, 16, 16)
    loss = masked_l1(recon, target, pixels)
    expected = (recon - target).abs()[pixels.unsqueeze(1)].mean()
    assert torch.allclose(loss, expected, atol=1e-6)
    visible_changed = torch.where(pixels.unsqueeze(1), recon, recon + 5.0)
    assert torch.equal(masked_l1(visible_changed, target, pixels), loss)
    hidden_changed = torch.where(pixels.unsqueeze(1), recon + 0.5, recon)
    assert masked_l1(hidden_changed, target, pixels) > loss


def test_the_wrapper_leaves_the_supervised_network_as_it_was():
    torch.manual_seed(0)
    net = create_model("swin_unet", num_classes=3, img_size=32, **SWIN_ARGS).eval()
    x = torch.rand(2, 1, 32, 32)
    before = net(x)
    simmim = SimMIM(net, 8).eval()
    assert torch.equal(net(x), before)
    out = simmim(x, random_masks(2, simmim.mask_grid(), 0.6, torch.Generator().manual_seed(0)))
    assert out.shape == (2, 1, 32, 32)
    # The mask token is used: hiding other cells changes the reconstruction.
    other = simmim(x, random_masks(2, simmim.mask_grid(), 0.6, torch.Generator().manual_seed(1)))
    assert not torch.allclose(out, other)
    # Only the encoder, the mask token and the head learn; the decoder and class head are carried along.
    masked_l1(out, x, upsample_mask(torch.ones(2, 4, 4, dtype=torch.bool), 8)).backward()
    grads = {n: p.grad is not None for n, p in simmim.named_parameters()}
    assert grads["mask_token"] and grads["head.weight"] and grads["swin_unet.patch_embed.proj.weight"]
    assert grads["swin_unet.layers.3.blocks.0.attn.qkv.weight"]
    assert not any(v for n, v in grads.items() if n.startswith(("swin_unet.layers_up", "swin_unet.output")))


# ------------------------------------------------------------------------------------- end to end, resume


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return fraction_phantom(tmp_path_factory.mktemp("pretrain_data"))


@pytest.fixture(scope="module")
def pretrained(phantom, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain_runs") / "full"
    summary = pretrain(CFG, [str(phantom)], out)
    return out, summary


def test_pretraining_writes_a_run_folder_and_an_encoder_file(pretrained):
    out, summary = pretrained
    assert summary["stopped"] == "completed" and summary["iterations"] == 5
    for name in (
        "config.yaml",
        "env.json",
        "metrics.jsonl",
        ENCODER_FILE,
        LOSS_FIGURE,
        RECONSTRUCTION_FIGURE,
    ):
        assert (out / name).is_file(), name
    records = read_metrics(out, "train")
    assert [r["iter"] for r in records] == [1, 2, 3, 4, 5] and all(set(r) >= {"loss", "lr"} for r in records)
    assert records[0]["lr"] > records[-1]["lr"]  # cosine decay
    env = json.loads((out / "env.json").read_text())
    (source,) = env["pretraining"]["sources"]
    assert (
        source["kind"] == "dataset"
        and source["slices"] == 8
        and source["preprocessing"]["kind"] == "ct_window"
    )
    assert {"organseg", "git", "packages", "command"} <= set(env)  # as train writes it
    config = (out / "config.yaml").read_text()
    assert "mask_ratio: 0.6" in config and "seed: 1234" in config
    encoder = torch.load(out / ENCODER_FILE, weights_only=True)
    assert encoder["format"] == SIMMIM_FORMAT and encoder["pretraining"]["iterations"] == 5
    assert not any(k.startswith(("layers_up", "output", "up.")) for k in encoder["model"])


def test_train_starts_from_the_encoder_and_says_so(pretrained, phantom, tmp_path, capsys):
    out, _ = pretrained
    weights = out / ENCODER_FILE
    cfg = {
        "model": {"name": "swin_unet", "args": SWIN_ARGS, "pretrained": str(weights)},
        "train": {"img_size": 32, "batch_size": 4, "max_iterations": 1, "progress": False, "threads": 1},
        "val": {"every": 0},
    }
    train(cfg, phantom, tmp_path / "ft")
    said = capsys.readouterr().out
    assert f"pretrained weights {weights}" in said and "swin_simmim weights" in said
    info = json.loads((tmp_path / "ft" / "env.json").read_text())["pretrained"]
    assert info["kind"] == "swin_simmim" and info["loaded"] > 100
    # What was loaded: the encoder as pretrained, and its mirror in the decoder (as ImageNet weights are).
    net = create_model("swin_unet", num_classes=9, img_size=32, **SWIN_ARGS)
    report = load_pretrained(net, weights)
    enc = torch.load(weights, weights_only=True)["model"]
    state = net.state_dict()
    assert torch.equal(state["swin_unet.patch_embed.proj.weight"], enc["patch_embed.proj.weight"])
    assert torch.equal(
        state["swin_unet.layers_up.1.blocks.0.attn.qkv.weight"], enc["layers.2.blocks.0.attn.qkv.weight"]
    )
    assert "swin_unet.output.weight" in report.left_random_keys


def test_an_interrupted_pretraining_resumes_bit_for_bit(pretrained, phantom, tmp_path):
    out = tmp_path / "stopped"
    cfg = {**CFG, "train": {**CFG["train"], "time_budget_min": 1e-9}}
    first = pretrain(cfg, [str(phantom)], out)
    assert first["stopped"] == "time_budget" and first["iterations"] == 1
    again = pretrain(CFG, [str(phantom)], out, resume=True)
    assert again["iterations"] == 5
    ref, got = (read_checkpoint(p / "checkpoints" / "last.pt") for p in (pretrained[0], out))
    for part in ("model", "simmim"):
        assert ref[part].keys() == got[part].keys()
        assert all(torch.equal(ref[part][k], got[part][k]) for k in ref[part]), part
    ref_enc, got_enc = (
        torch.load(p / ENCODER_FILE, weights_only=True)["model"] for p in (pretrained[0], out)
    )
    assert all(torch.equal(ref_enc[k], got_enc[k]) for k in ref_enc)
    assert [r["loss"] for r in read_metrics(out, "train")] == [
        r["loss"] for r in read_metrics(pretrained[0], "train")
    ]


# ------------------------------------------------------------------------------------------- refusals


def test_held_out_splits_are_refused(phantom, tmp_path):
    for split in ("val", "test"):
        with pytest.raises(ConfigError, match=rf"split '{split}'.*must stay unseen"):
            PretrainImages([{"path": str(phantom), "split": split}])
    nn = tmp_path / "nnunet"
    write_image(
        np.zeros((2, 8, 8), np.int16) - 500, Geometry(spacing=(1.0, 1.0, 1.0)), nn / "imagesTs" / "a.nii.gz"
    )
    (nn / "dataset.json").write_text("{}")
    with pytest.raises(ConfigError, match="inside the nnunet dataset"):
        PretrainImages([{"path": str(nn / "imagesTs"), "intensity": "ct"}])


def test_a_fold_leaves_its_held_out_subjects_out(phantom):
    every = PretrainImages([str(phantom)])
    fold = PretrainImages([str(phantom)], {"fold": 0, "folds": 2, "fold_seed": 1, "subjects": None})
    assert 0 < len(fold.train_slices()) < len(every.train_slices())


def test_volume_folders_are_sliced_with_their_intensity_mapping(tmp_path):
    ct = np.linspace(-1000, 1000, 3 * 10 * 12).reshape(3, 10, 12).astype(np.int16)
    write_image(ct, Geometry(spacing=(2.0, 1.0, 1.0)), tmp_path / "scans" / "s1.nii.gz")
    images = PretrainImages([{"path": str(tmp_path / "scans"), "intensity": "ct", "window": [-100, 100]}])
    slices = images.train_slices()
    assert len(slices) == 3 and slices[0][0].shape == (10, 12) and not slices[1][1].any()
    expected = np.clip((ct[1].astype(np.float32) + 100) / 200, 0, 1)
    assert np.allclose(slices[1][0], expected, atol=1e-6)
    assert images.records()[0]["preprocessing"] == {"kind": "ct_window", "window": [-100.0, 100.0]}


def test_bad_sources_and_recipes_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no volumes found"):
        PretrainImages([{"path": str(tmp_path / "empty"), "kind": "volumes", "intensity": "ct"}])
    labels = np.zeros((3, 8, 8), np.uint8)
    labels[:, 2:5, 2:5] = 3
    write_image(labels, Geometry(spacing=(1.0, 1.0, 1.0)), tmp_path / "labels" / "l.nii.gz")
    with pytest.raises(DataError, match="label map"):
        PretrainImages([{"path": str(tmp_path / "labels"), "intensity": "mri"}])
    with pytest.raises(ConfigError, match="SparK"):
        resolve_pretrain_config({"model": {"name": "unet"}})
    with pytest.raises(ConfigError, match="pretrain.mask_ratio"):
        resolve_pretrain_config({"pretrain": {"mask_ratio": 1.0}})
    with pytest.raises(ConfigError, match="unknown configuration key 'pretrain.mask_size'"):
        resolve_pretrain_config({"pretrain": {"mask_size": 8}})
    with pytest.raises(ConfigError, match="multiple of the network's patch size"):
        resolve_pretrain_config({"pretrain": {"mask_patch_size": 30}})


def test_the_command_line_pretrains_and_refuses_in_one_line(phantom, tmp_path, capsys):
    sets = []
    for key, value in [
        ("model.args.embed_dim", 12),
        ("model.args.num_heads", "[1,2,3,4]"),
        ("model.args.window_size", 2),
        ("train.img_size", 32),
        ("train.batch_size", 4),
        ("train.max_iterations", 1),
        ("train.progress", "false"),
        ("pretrain.mask_patch_size", 8),
    ]:
        sets += ["--set", f"{key}={value}"]
    assert main(["pretrain", "--data", str(phantom), "--out", str(tmp_path / "p"), *sets]) == 0
    assert "model.pretrained=" in capsys.readouterr().out
    one_line_error(capsys, ["pretrain", "--out", tmp_path / "q", *sets], "no pretraining images")
    one_line_error(capsys, ["pretrain", "--volumes", phantom, "--out", tmp_path / "q"], "--intensity")
    one_line_error(
        capsys, ["pretrain", "--data", phantom, "--out", tmp_path / "q", "--set", "model.name=unet"], "unet"
    )
    assert not (tmp_path / "q").exists()
    shutil.rmtree(tmp_path / "p")


def test_the_pretraining_preset_ships_apart_from_train_presets_and_is_simmims_recipe():
    assert list_pretrain_presets() == ["swin_unet_simmim"]
    assert "swin_unet_simmim" not in list_presets()  # not a train preset: train would refuse its keys
    cfg = resolve_pretrain_config(load_pretrain_config("swin_unet_simmim"))
    assert cfg["pretrain"]["mask_patch_size"] == 32 and cfg["pretrain"]["mask_ratio"] == 0.6
    assert (cfg["train"]["optimizer"], cfg["train"]["schedule"], cfg["train"]["weight_decay"]) == (
        "adamw",
        "cosine",
        0.05,
    )
    assert resolve_pretrain_config(cfg) == cfg  # a run's config.yaml reads back as itself (resume)


def test_pretraining_configures_every_data_key_the_training_loop_reads():
    # The loop is train's: a data key train gains (as data.in_memory did) must be set or fixed here too.
    from organseg.training.config import DEFAULTS
    from organseg.training.pretrain import _FIXED, PRETRAIN_DEFAULTS

    given = set(PRETRAIN_DEFAULTS["data"]) | set(_FIXED["data"])
    assert set(DEFAULTS["data"]) <= given, set(DEFAULTS["data"]) - given
    resolved = resolve_pretrain_config({})
    assert resolved["data"]["in_memory"] == "auto"


def _nnunet_raw(root):
    import SimpleITK as sitk

    for i, case in enumerate(("c1", "c2", "c3")):
        img = np.random.default_rng(i).normal(size=(3, 8, 8)).astype(np.float32)
        lab = (np.arange(192).reshape(3, 8, 8) % 2).astype(np.uint8)
        (root / "imagesTr").mkdir(parents=True, exist_ok=True)
        (root / "labelsTr").mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(sitk.GetImageFromArray(img), str(root / "imagesTr" / f"{case}_0000.nii.gz"))
        sitk.WriteImage(sitk.GetImageFromArray(lab), str(root / "labelsTr" / f"{case}.nii.gz"))
    meta = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "x": 1}, "numTraining": 3}
    (root / "dataset.json").write_text(json.dumps({**meta, "file_ending": ".nii.gz"}))
    return root


def test_every_dataset_layout_is_a_source_and_its_labels_are_never_read(phantom, tmp_path):
    root = _nnunet_raw(tmp_path / "nn")
    slices = PretrainImages([str(root)]).train_slices()
    training = open_dataset(root).train_slices()  # its own training split: the validation case stays out
    assert len(slices) == len(training) == 6 and all(not s[1].any() for s in slices)
    assert all(np.isfinite(s[0]).all() and s[0].min() >= 0 and s[0].max() <= 1 for s in slices)
    synapse = PretrainImages([str(phantom)]).train_slices()
    assert len(synapse) == 8 and not any(s[1].any() for s in synapse)  # the phantom's two training cases


def test_acdc_and_real_ct_in_nifti_and_dicom_pretrain_together(acdc_dir, totalseg_dir, tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    (scans / "ct.nii.gz").symlink_to(totalseg_dir / "example_ct.nii.gz")
    (scans / "series").symlink_to(totalseg_dir / "example_ct_dicom", target_is_directory=True)
    fold = {"fold": 0, "folds": 5, "fold_seed": 12345, "subjects": None}
    both = PretrainImages([str(acdc_dir), {"path": str(scans), "intensity": "ct"}], fold)
    acdc_only = PretrainImages([str(acdc_dir)], fold)
    n_ct = len(both.train_slices()) - len(acdc_only.train_slices())
    assert n_ct == 112 + 20  # the NIfTI's axial slices and the DICOM series', one per image
    kinds = [r["preprocessing"]["kind"] for r in both.records()]
    assert kinds[1] == "ct_window" and len(kinds) == 2
    assert 0 < len(acdc_only.train_slices()) < 1312  # ACDC's 1,312 training slices less the fold's held-out


def test_the_pretraining_study_report_pairs_each_arm_with_scratch_by_subject(
    pretrained, phantom, tmp_path, capsys
):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import pretrain_gain

    weights = pretrained[0] / ENCODER_FILE
    for name, start in (("swin_scratch1_s1", None), ("swin_pre1_acdc_ft1_s1", str(weights))):
        cfg = {
            "model": {"name": "swin_unet", "args": SWIN_ARGS, "pretrained": start},
            "train": {"img_size": 32, "batch_size": 4, "max_iterations": 2, "progress": False, "threads": 1},
            "val": {"every": 0},
        }
        train(cfg, phantom, tmp_path / name)
        assert (
            main(["test", str(tmp_path / name), "--split", "val", "--checkpoint", "last", "--no-viewer"]) == 0
        )
    shutil.copytree(tmp_path / "swin_scratch1_s1", tmp_path / "swin_scratch1_s2")  # scratch has a second seed
    capsys.readouterr()
    args = type("A", (), {"root": str(tmp_path), "figure": str(tmp_path / "gain.png")})
    assert pretrain_gain.report(args) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| swin_")]
    assert [r.split("|")[1].strip() for r in rows] == ["swin_scratch1", "swin_pre1_acdc_ft1"]
    pre = [c.strip() for c in rows[1].strip("|").split("|")]
    assert [r.split("|")[2].strip() for r in rows] == ["2", "1"]  # seeds per arm
    # paired with scratch's run of the same seed, not with its mean over a seed the arm never had
    assert " + " in pre[2] and pre[-2].endswith("(vs swin_scratch1, seed 1)")
    assert "p=" in pre[-2] and "p=" in pre[-1]
    assert rows[0].rstrip(" |").endswith("– | –")  # scratch is the baseline
    assert (tmp_path / "gain.png").stat().st_size > 1000
