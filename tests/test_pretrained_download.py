"""``model.pretrained: imagenet``: the cache folder, the download from the published address (here a
``file://`` or localhost address: tests never reach the network), the checks before use, the offline
message."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import stat
import urllib.request

import pytest
import torch

from helpers import SWIN_T, TINY_SWIN_WIDTHS, ms_swin_state, vgg16_bn_state
from organseg.cli.main import main
from organseg.errors import CheckpointError
from organseg.models import create_model
from organseg.models import hub as pt
from organseg.models.pretrained import load_pretrained
from organseg.training.config import load_config, resolve_config


@pytest.fixture(scope="module")
def swin_t_file(tmp_path_factory):
    """A file with the real Swin-T release's keys and shapes (random values), as the release wraps it."""
    path = tmp_path_factory.mktemp("published") / "swin_tiny_patch4_window7_224.pth"
    torch.save({"model": ms_swin_state(**SWIN_T)}, path)
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("ORGANSEG_CACHE", str(folder))
    return folder


def _publish(monkeypatch, name: str, **changes) -> pt.PublishedWeights:
    pub = dataclasses.replace(pt.IMAGENET_WEIGHTS[name], **changes)
    monkeypatch.setitem(pt.IMAGENET_WEIGHTS, name, pub)
    return pub


def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("urlopen called")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def test_spec_values(tmp_path):
    assert pt.resolve_pretrained(None, "swin_unet") is None
    assert pt.resolve_pretrained("", "swin_unet") is None
    assert pt.resolve_pretrained(str(tmp_path / "w.pth"), "swin_unet") == tmp_path / "w.pth"
    with pytest.raises(CheckpointError, match="no published ImageNet weights for 'nonet'"):
        pt.resolve_pretrained("imagenet", "nonet")


def test_cache_folder_rule(tmp_path, monkeypatch):
    monkeypatch.delenv("ORGANSEG_CACHE", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert pt.cache_dir() == tmp_path / "th" / "hub" / "checkpoints"  # where torch hub / timm put files
    monkeypatch.setenv("ORGANSEG_CACHE", str(tmp_path / "mine"))
    assert pt.cache_dir() == tmp_path / "mine"


def test_cached_file_is_used_without_network(cache, monkeypatch):
    cache.mkdir()
    (cache / "swin_tiny_patch4_window7_224.pth").write_bytes(b"x")
    _no_network(monkeypatch)
    assert pt.resolve_pretrained("imagenet", "swin_unet") == cache / "swin_tiny_patch4_window7_224.pth"
    assert pt.resolve_pretrained("ImageNet", "swin_unet") == cache / "swin_tiny_patch4_window7_224.pth"


def test_download_checks_and_loads(cache, monkeypatch, swin_t_file, capsys):
    _publish(monkeypatch, "swin_unet", url=swin_t_file.as_uri())
    old = os.umask(0o022)
    try:
        path = pt.resolve_pretrained("imagenet", "swin_unet", progress=True)
    finally:
        os.umask(old)
    assert path == cache / "swin_tiny_patch4_window7_224.pth"
    assert path.read_bytes() == swin_t_file.read_bytes()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # readable by colleagues, as open() under umask 022
    assert sorted(p.name for p in cache.iterdir()) == [path.name]  # no temporary left
    assert "swin_tiny_patch4_window7_224.pth" in capsys.readouterr().err  # the progress bar names the file
    # The second call finds it in the cache.
    _no_network(monkeypatch)
    assert pt.resolve_pretrained("imagenet", "swin_unet") == path
    # And it loads into the paper-configuration Swin-Unet as the official load_from does.
    model = create_model("swin_unet")
    report = load_pretrained(model, path)
    assert report.kind == "swin_imagenet_ms" and report.loaded == 217


def test_download_of_another_file_is_refused(cache, monkeypatch, tmp_path):
    other = tmp_path / "other.pth"
    torch.save({"model": ms_swin_state(embed_dim=12, num_heads=(1, 2, 3, 4))}, other)  # a smaller Swin
    _publish(monkeypatch, "swin_unet", url=other.as_uri())
    with pytest.raises(CheckpointError, match=r"is not the ImageNet-1k Swin-T.*patch_embed\.proj\.weight"):
        pt.resolve_pretrained("imagenet", "swin_unet", progress=False)
    assert list(cache.iterdir()) == []  # nothing put in place, no temporary left


def test_truncated_download_is_refused(cache, monkeypatch, swin_t_file):
    data = swin_t_file.read_bytes()

    class Cut(io.BytesIO):
        headers = {"Content-Length": str(len(data))}

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: Cut(data[: len(data) // 2]))
    with pytest.raises(CheckpointError, match=r"download incomplete \(\d+ of \d+ bytes\)"):
        pt.resolve_pretrained("imagenet", "swin_unet", progress=False)
    assert list(cache.iterdir()) == []


def test_sha256_prefix_checked(cache, monkeypatch, tmp_path):
    vgg = tmp_path / "vgg.pth"
    state = vgg16_bn_state()
    state["classifier.6.weight"] = torch.zeros(1000, 4096)  # the real head shape
    torch.save(state, vgg)
    _publish(monkeypatch, "unet", url=vgg.as_uri())  # the file name promises sha256 6c64b313...
    with pytest.raises(CheckpointError, match="SHA-256 .* does not start with 6c64b313"):
        pt.resolve_pretrained("imagenet", "unet", progress=False)
    assert list(cache.iterdir()) == []
    prefix = hashlib.sha256(vgg.read_bytes()).hexdigest()[:8]
    _publish(monkeypatch, "unet", url=vgg.as_uri(), sha256_prefix=prefix)
    path = pt.resolve_pretrained("imagenet", "unet", create_model("unet"), progress=False)
    assert path.read_bytes() == vgg.read_bytes()


@pytest.mark.parametrize("where", ["file", "localhost"])
def test_offline_message(cache, monkeypatch, where):
    url = "file:///nonexistent/organseg/swin.pth" if where == "file" else "http://127.0.0.1:9/swin.pth"
    _publish(monkeypatch, "swin_unet", url=url)
    with pytest.raises(CheckpointError) as info:
        pt.resolve_pretrained("imagenet", "swin_unet", progress=False)
    msg = str(info.value)
    assert "\n" not in msg
    for part in ("swin_tiny_patch4_window7_224.pth", url, str(cache), "ORGANSEG_CACHE"):
        assert part in msg
    assert "model.pretrained=null" in msg
    assert not cache.exists() or list(cache.iterdir()) == []


def test_network_the_file_cannot_fit_is_refused_before_download(cache, monkeypatch):
    _no_network(monkeypatch)
    with pytest.raises(CheckpointError, match="do not fit this swin_unet"):
        pt.resolve_pretrained("imagenet", "swin_unet", create_model("swin_unet", **TINY_SWIN_WIDTHS))
    with pytest.raises(CheckpointError, match="do not fit this unet"):
        pt.resolve_pretrained("imagenet", "unet", create_model("unet", width=0.25))


def test_presets_say_what_they_start_from():
    def pretrained(name: str):
        return resolve_config(load_config(name))["model"]["pretrained"]

    # The official Swin-Unet trainer always starts from ImageNet Swin-T; the seed U-Net and the demo do not.
    assert pretrained("swin_unet_synapse") == "imagenet"
    assert pretrained("swin_unet_acdc") == "imagenet"
    assert pretrained("unet_synapse") is None and pretrained("unet_acdc") is None
    assert pretrained("demo_swin_unet") is None and pretrained("demo_unet") is None


def test_train_cli_one_line_when_weights_cannot_be_had(acdc_dir, cache, monkeypatch, tmp_path, capsys):
    _publish(monkeypatch, "swin_unet", url="file:///nonexistent/swin.pth")
    out = tmp_path / "run"
    argv = ["train", "swin_unet_acdc", "--data", str(acdc_dir), "--out", str(out)]
    argv += ["--set", "data.max_train_slices=4", "--set", "train.max_iterations=1", "--set", "val.every=0"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the slice-loading bar
    assert err.startswith("organseg train: error: model.pretrained=imagenet:")
    assert "swin_tiny_patch4_window7_224.pth" in err and "--set model.pretrained=null" in err
    assert not (out / "checkpoints").exists()
