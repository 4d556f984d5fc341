import pytest
import torch
from torch import nn

import dynprune as dp
from dynprune.audit import audit, count_macs
from dynprune.classifier import DifficultyClassifier
from dynprune.classpruning import ClassPruning
from dynprune.registry import create_model


def test_dncnn_macs_closed_form_and_paper_convention():
    # ClassPruning's DnCNN: 20 layers, 64 channels, bias; per pixel 9*64 + 18*9*64*64 + 9*64 MACs
    conv = dp.convert(create_model("dncnn"))
    rep = audit(conv, torch.zeros(1, 1, 256, 256))
    px = 256 * 256
    head = tail = 9 * 64 * px
    mid = 9 * 64 * 64 * px
    convs = {m.name: m for m in rep.branches[-1].modules if "Conv" in m.type}
    assert convs["dncnn.0"].dense_macs == head and convs["dncnn.56"].dense_macs == tail
    assert all(convs[f"dncnn.{3 * k - 1}"].dense_macs == mid for k in range(1, 19))
    # the paper's 87.28 G: 2 x (MACs + bias adds) at 1x1x256x256 (architectures.md 1.4)
    assert rep.branches[-1].flops("classpruning") == 2 * (664_704 + 1_217) * px == 87_283_597_312
    one_four = rep.branches[0]
    # 1:4 on every conv but the 1-channel head
    expected = 2 * ((9 * 64 + 64) * px + 0.25 * (18 * (mid + 64 * px) + tail + px))
    assert one_four.flops("classpruning") == pytest.approx(expected, rel=1e-12)
    sparse_convs = [m for m in one_four.modules if m.type == "NMConv2d"]
    assert len(sparse_convs) == 19 and all(m.effective_macs * 4 == m.dense_macs for m in sparse_convs)
    assert rep.params_added == 2 * 18 * 128


def test_routed_average_and_classifier():
    net = dp.convert(nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1)))
    model = ClassPruning(net, DifficultyClassifier(4, 3, widths=(4, 4, 4, 4)))
    rep = audit(model, torch.zeros(1, 4, 16, 16))
    px = 16 * 16
    dense = 2 * 9 * 4 * 8 * px
    assert [b.effective_macs for b in rep.branches] == [dense // 4, dense // 2, dense]
    assert rep.classifier_macs == count_macs(model.classifier, torch.zeros(1, 4, 16, 16)) > 0
    assert rep.routed_macs([0.5, 0.25, 0.25]) == pytest.approx(0.5 * dense / 4 + 0.25 * dense / 2 + 0.25 * dense
                                                               + rep.classifier_macs)
    torch.testing.assert_close(rep.relative_costs(), torch.tensor([0.25, 0.5, 1.0]))
    with pytest.raises(ValueError, match="sum to 1"):
        rep.routed_macs([0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="convention"):
        rep.branches[0].flops("bogus")
    assert "| 1:4 |" in rep.table()


def test_transposed_conv_output_grid_convention():
    net = dp.convert(nn.Sequential(nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1, bias=False)), ["4:4"])
    rep = audit(net, torch.zeros(1, 8, 10, 10))
    true = 8 * 4 * 16 * 100  # fvcore: Cin*Cout*k^2 per input pixel
    assert rep.branches[0].dense_macs == true
    assert rep.branches[0].flops("classsr") == 2 * true * 4  # thop counts on the output grid (stride^2)
