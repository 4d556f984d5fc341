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
    with pytest.raises(ValueError, match=r"no readable image: x.jpg \(cannot read image"), pytest.warns(UserWarning):
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


# ---- real pairs (paired_folder) -------------------------------------------------------------------
def _pairs(root, names, size=(24, 20), clean_size=None):
    for k, name in enumerate(names):
        torch.manual_seed(k)
        write_image(torch.rand(3, *size), root / "degraded" / f"{name}.png")
        write_image(torch.rand(3, *(clean_size or size)), root / "clean" / f"{name}.png")
    return str(root / "degraded"), str(root / "clean")


def test_paired_patches_are_aligned_crops(tmp_path):
    from dynprune.plugins.datasets import PairedFolder

    deg, cln = _pairs(tmp_path, ["a", "b"])
    whole = PairedFolder(deg, cln)
    assert len(whole) == 2 and whole[0][0] == "a"
    patches = PairedFolder(deg, cln, patch_size=8, patches_per_image=5, seed=3)
    assert len(patches) == 10
    d, c = patches[7]
    assert d.shape == c.shape == (3, 8, 8)
    # the same crop and mode of both images: find the patch in the (augmented) degraded image's grid
    _, full_d, full_c = whole[1]
    modes = [(k, f) for k in range(4) for f in (False, True)]
    hits = []
    for k, flip in modes:
        vd, vc = (torch.rot90(t, k, dims=(1, 2)) for t in (full_d, full_c))
        if flip:
            vd, vc = vd.flip(2), vc.flip(2)
        for y in range(vd.shape[1] - 7):
            for x in range(vd.shape[2] - 7):
                if torch.equal(vd[:, y:y + 8, x:x + 8], d):
                    hits.append(torch.equal(vc[:, y:y + 8, x:x + 8], c))
    assert hits and all(hits)
    assert torch.equal(patches[7][0], d)  # a pure function of (seed, epoch, index)
    patches.set_epoch(1)
    assert not torch.equal(patches[7][0], d)


def test_paired_folder_errors_name_the_files(tmp_path):
    from dynprune.plugins.datasets import PairedFolder

    deg, cln = _pairs(tmp_path / "m", ["a", "b", "c"])
    (tmp_path / "m/clean/c.png").rename(tmp_path / "m/clean/z.png")
    with pytest.raises(ValueError, match=r"matched by file name\): degraded without clean \['c.png'\] \(1\), clean "
                                         r"without degraded \['z.png'\] \(1\)"):
        PairedFolder(deg, cln)
    deg, cln = _pairs(tmp_path / "s", ["a"], size=(24, 20), clean_size=(24, 21))
    with pytest.raises(ValueError, match=r"differ in size: a.png \(3, 24, 20\) vs a.png \(3, 24, 21\)"):
        PairedFolder(deg, cln)
    deg, cln = _pairs(tmp_path / "x2", ["a"], size=(12, 10), clean_size=(24, 20))
    assert PairedFolder(deg, cln, scale=2, patch_size=6)[0][1].shape == (3, 12, 12)  # SR pairs
    with pytest.raises(ValueError, match=r"smaller than patch_size=16: a \(12, 10\)"):
        PairedFolder(deg, cln, scale=2, patch_size=16)


def test_training_on_real_rain_pairs_with_validation_and_best(tmp_path, data_dir):
    """ClassPruning on Rain100H pairs through paired_folder: labels from the input PSNR, a validation split of
    the training pairs, best.pt by routed PSNR."""
    from dynprune.methods.classpruning import Trainer
    from dynprune.models import load_trained
    from dynprune.outputs import RunLog

    from .conftest import tiny_config

    rain = data_dir / "derain/Rain100H"
    if not rain.is_dir():
        pytest.skip(f"{rain} is not in the shared data")
    cfg = tiny_config(tmp_path, model={"name": "dncnn", "kwargs": {"in_channels": 3, "depth": 4, "width": 8}},
                      dataset={"name": "paired_folder", "kwargs": {"degraded": str(rain / "rainy"),
                                                                    "clean": str(rain / "clean"), "patch_size": 24,
                                                                    "patches_per_image": 4}},
                      labeler={"name": "input_psnr"}, validation={"every": 5, "fraction": 0.1, "crop": 48})
    t = Trainer(cfg)
    assert len(t.dataset.items) == 27 and len(t.val_images) == 3  # 30 pairs, 3 held out
    edges = t.labeler.edges.tolist()
    assert len(edges) == 2 and 5 < edges[0] < edges[1] < 30  # dB: heavy rain
    t.fit()
    rows = [r for r in RunLog(tmp_path / "log.jsonl").rows() if "validation" in r]
    assert len(rows) == 2 and rows[0]["validation"]["psnr_input"] == rows[1]["validation"]["psnr_input"]
    assert sum(rows[0]["validation"]["route"].values()) == 3
    model, _, ckpt = load_trained(tmp_path / "best.pt")
    assert ckpt["best"]["metric"] == "psnr_routed"


def test_real_pairs_need_a_pair_labeler(tmp_path):
    from dynprune.methods.classpruning import Trainer

    from .conftest import tiny_config

    deg, cln = _pairs(tmp_path / "p", ["a", "b"], size=(32, 32), clean_size=(32, 32))
    cfg = tiny_config(tmp_path / "run", model={"name": "dncnn", "kwargs": {"in_channels": 3, "depth": 4, "width": 8}},
                      dataset={"name": "paired_folder", "kwargs": {"degraded": deg, "clean": cln, "patch_size": 16}})
    with pytest.raises(ValueError, match="real degraded/clean pairs, which have no degradation level for labeler "
                                         "'level': use labeler input_psnr"):
        Trainer(cfg)
