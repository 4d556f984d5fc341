import pytest
import torch

from dynprune.imageio import read_folder, read_image, write_image
from dynprune.plugins.datasets import PatchDataset, image_folder


def test_missing_empty_and_corrupt_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no image"):
        read_folder(tmp_path / "empty")
    write_image(torch.rand(1, 20, 20), tmp_path / "mixed/good.png")
    (tmp_path / "mixed/bad.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image\(s\).*bad.png"):
        files, images = read_folder(tmp_path / "mixed")
    assert [f.name for f in files] == ["good.png"] and images[0].shape == (1, 20, 20)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad/x.jpg").write_bytes(b"\xff\xd8 broken")
    with pytest.raises(ValueError, match=r"no readable image \(1 corrupt\)"), pytest.warns(UserWarning):
        read_folder(tmp_path / "bad")


def test_image_roundtrip_and_channels(tmp_path):
    img = torch.rand(3, 10, 12)
    write_image(img, tmp_path / "a.png")
    back = read_image(tmp_path / "a.png")
    assert back.shape == (3, 10, 12) and (back - img).abs().max() <= 0.5 / 255 + 1e-6
    gray = read_image(tmp_path / "a.png", channels=1)
    assert gray.shape == (1, 10, 12)


def test_patches_deterministic_and_small_images(tmp_path):
    ds = PatchDataset([torch.rand(1, 30, 30)], patch_size=16, patches_per_image=4, seed=3)
    a = ds[2]
    assert torch.equal(a, ds[2]) and a.shape == (1, 16, 16)
    ds.set_epoch(1)
    assert not torch.equal(a, ds[2])
    write_image(torch.rand(1, 10, 10), tmp_path / "tiny/t.png")
    with pytest.raises(ValueError, match=r"t.png of size \(10, 10\) is smaller than patch_size=16"):
        image_folder(str(tmp_path / "tiny"), patch_size=16)
