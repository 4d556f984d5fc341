"""Rain, blur and haze synthesizers, and paired folders (issue: the paper's other three tasks)."""

import math

import pytest
import torch

from dynprune.imageio import write_image
from dynprune.plugins.blur import average_frames, line_kernel
from dynprune.plugins.datasets import PairedFolder
from dynprune.registry import create


def _img(n=3, h=48, w=64):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(1)) * 0.5 + 0.25


def test_rain_seeded_levels_ordered_and_in_range():
    rain = create("degradations", "rain_streaks")
    x = _img(6)
    a, la = rain(x, generator=torch.Generator().manual_seed(0), level=torch.tensor([0, 0, 1, 1, 2, 2]))
    b, _ = rain(x, generator=torch.Generator().manual_seed(0), level=torch.tensor([0, 0, 1, 1, 2, 2]))
    assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 1
    var = (a - x).flatten(1).var(1)
    assert var[:2].mean() < var[2:4].mean() < var[4:].mean()  # light < medium < heavy
    assert ((a - x) >= -1e-6).all()  # screen blend only brightens: white streaks
    with pytest.raises(ValueError, match="unknown rain preset.*accepted: light, medium, heavy"):
        create("degradations", "rain_streaks", levels=["drizzle"])


def test_line_kernel_and_motion_blur():
    k = line_kernel(9, 0)
    assert k.shape == (9, 9) and k.sum().item() == pytest.approx(1.0)
    assert k[4].sum().item() == pytest.approx(1.0)  # horizontal: all mass on the centre row
    kv = line_kernel(9, 90)
    assert kv[:, 4].sum().item() == pytest.approx(1.0)
    blur = create("degradations", "motion_blur", lengths=[[3, 3], [21, 21]])
    flat = torch.full((1, 3, 40, 40), 0.4)
    y, _ = blur(flat, generator=torch.Generator().manual_seed(0), level=1)
    torch.testing.assert_close(y, flat)  # a flat image stays flat
    x = _img(2)
    y0, _ = blur(x, generator=torch.Generator().manual_seed(0), level=0)
    y1, _ = blur(x, generator=torch.Generator().manual_seed(0), level=1)
    assert (y1 - x).abs().mean() > (y0 - x).abs().mean()
    with pytest.raises(ValueError, match="1 <= min <= max"):
        create("degradations", "motion_blur", lengths=[[5, 2]])


def test_frame_average():
    frames = torch.arange(7, dtype=torch.float32).view(7, 1, 1, 1).expand(7, 3, 4, 4)
    blurred, sharp = average_frames(frames, 5)
    assert blurred.mean().item() == 3.0 and sharp.mean().item() == 3.0
    with pytest.raises(ValueError, match="need frames -1..7, but the sequence has 7 frame"):
        average_frames(frames, 9)
    with pytest.raises(ValueError, match="odd"):
        average_frames(frames, 4)


def test_blur_from_frame_folder(tmp_path):
    from dynprune.plugins.blur import blur_from_frames

    for k in range(3):
        write_image(torch.full((3, 8, 8), k / 4), tmp_path / f"frames/{k:03d}.png")
    blurred, sharp = blur_from_frames(str(tmp_path / "frames"), 3)
    assert blurred.mean().item() == pytest.approx(0.25, abs=1 / 255) and sharp.mean().item() == pytest.approx(0.25, abs=1 / 255)
    with pytest.raises(ValueError, match="holds 3 frame\\(s\\), fewer than the 5 asked"):
        blur_from_frames(str(tmp_path / "frames"), 5)


def test_haze_closed_form_and_ranges():
    haze = create("degradations", "haze", betas=[[1.0, 1.0]], airlight=[0.8, 0.8], depth="homogeneous")
    x = _img(2)
    y, _ = haze(x, generator=torch.Generator().manual_seed(0))
    t = math.exp(-1.0)
    torch.testing.assert_close(y, x * t + 0.8 * (1 - t))
    g = create("degradations", "haze")
    yg, lv = g(x, generator=torch.Generator().manual_seed(0), level=2)
    assert (yg[:, :, 0] - x[:, :, 0]).abs().mean() > (yg[:, :, -1] - x[:, :, -1]).abs().mean()  # far = top
    for bad in ({"betas": [[-0.1, 0.5]]}, {"airlight": [0.5, 1.2]}, {"depth": "midas"}):
        with pytest.raises(ValueError, match="haze"):
            create("degradations", "haze", **bad)


def test_haze_frame_makes_a_patch_a_crop_of_a_scene():
    from dynprune.plugins.haze import ground_plane_depth

    # closed form: rows top .. top + h - 1 of a frame of F rows, d = 1 - y / (F - 1)
    d = ground_plane_depth(3, 2, top=4, frame=11)
    torch.testing.assert_close(d[:, 0], torch.tensor([0.6, 0.5, 0.4]))
    x = _img(4, h=32)
    whole = create("degradations", "haze")
    framed = create("degradations", "haze", frame=320)
    ramp = lambda y: ((y[:, :, 0] - x[:, :, 0]).abs().mean() - (y[:, :, -1] - x[:, :, -1]).abs().mean()).item()
    y0, _ = whole(x, generator=torch.Generator().manual_seed(0), level=2)
    y1, _ = framed(x, generator=torch.Generator().manual_seed(0), level=2)
    assert 0 <= ramp(y1) < 0.25 * ramp(y0)          # a 32-row crop shows ~10% of the far-to-near ramp
    # an input of F rows or more is a whole scene: bit-identical to no frame
    tall = create("degradations", "haze", frame=32)
    y2, _ = tall(x, generator=torch.Generator().manual_seed(0), level=2)
    torch.testing.assert_close(y2, y0, rtol=0, atol=0)
    with pytest.raises(ValueError, match="haze frame must be a height in pixels >= 2"):
        create("degradations", "haze", frame=1)


def test_paired_folder_matching_and_errors(tmp_path):
    for name in ("0001_0.8_0.2", "0002_0.8_0.08"):
        write_image(torch.rand(3, 10, 12), tmp_path / f"hazy/{name}.png")
    for name in ("0001", "0002"):
        write_image(torch.rand(3, 10, 12), tmp_path / f"clear/{name}.png")
    ds = PairedFolder(str(tmp_path / "hazy"), str(tmp_path / "clear"))
    assert [n for n, _, _ in ds] == ["0001_0.8_0.2", "0002_0.8_0.08"]
    write_image(torch.rand(3, 10, 12), tmp_path / "hazy/0003.png")
    write_image(torch.rand(3, 10, 12), tmp_path / "clear/0009.png")
    with pytest.raises(ValueError, match=r"degraded without clean \['0003.png'\] \(1\), clean without degraded \['0009.png'\] \(1\)"):
        PairedFolder(str(tmp_path / "hazy"), str(tmp_path / "clear"))
    write_image(torch.rand(3, 8, 8), tmp_path / "a/x.png")
    write_image(torch.rand(3, 9, 8), tmp_path / "b/x.png")
    with pytest.raises(ValueError, match=r"differ in size: x.png \(3, 8, 8\) vs x.png \(3, 9, 8\)"):
        PairedFolder(str(tmp_path / "a"), str(tmp_path / "b"))


def test_residual_variance_labels_shared_with_rain():
    """The eq. 2-3 labeler serves any additive degradation: rain residuals rescale to the class medians."""
    rain = create("degradations", "rain_streaks")
    x = _img(9)
    y, _ = rain(x, generator=torch.Generator().manual_seed(2))
    lab = create("labelers", "residual_variance", num_classes=3)
    lab.fit(lab.variance(x, y))
    y2, labels = lab(x, y)
    torch.testing.assert_close(lab.variance(x, y2), lab.medians[labels], rtol=1e-4, atol=0)
