import sys

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


def _counting_audits(monkeypatch):
    audit_module = sys.modules["dynprune.audit"]  # the package exports a function of the same name
    calls = []
    real = audit_module._branches  # traces every branch of the restorer
    monkeypatch.setattr(audit_module, "_branches", lambda r, i, s: calls.append(tuple(i[0].shape)) or real(r, i, s))
    return calls


def test_audit_reuses_traces_across_image_sizes(monkeypatch):
    calls = _counting_audits(monkeypatch)
    conv = dp.convert(create_model("dncnn", depth=5, width=16))
    model = ClassPruning(conv, DifficultyClassifier(1, 3))
    sizes = [(20, 24), (31, 17), (40, 40), (33, 57), (20, 24)]
    reps = [audit(model, torch.zeros(1, 1, *s)) for s in sizes]
    assert calls == [(1, 1, 20, 24), (1, 1, 31, 17), (1, 1, 40, 40)]  # the third verified the affine fit
    # (the strided classifier is not affine in pixels: it is traced per size, exactly)
    fresh = audit(model, torch.zeros(1, 1, 33, 57), reuse=False)
    assert reps[3].branches == fresh.branches and reps[3].classifier_macs == fresh.classifier_macs
    assert reps[3].input_shape == (1, 1, 33, 57) and reps[4] == reps[0]


def test_audit_traces_every_size_when_counts_are_not_affine(monkeypatch):
    calls = _counting_audits(monkeypatch)
    net = dp.convert(nn.Sequential(nn.Conv2d(4, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 8, 3)))  # valid, strided
    for s in [(20, 24), (31, 17), (40, 40), (33, 57)]:
        rep = audit(net, torch.zeros(1, 4, *s))
        assert rep.branches[-1].dense_macs == count_macs(net, torch.zeros(1, 4, *s))
    assert len(calls) == 4


def test_attention_counted_vit_b16_matches_its_documented_macs():
    torchvision = pytest.importorskip("torchvision", reason="torchvision (timm's dependency) is not installed")

    macs = count_macs(torchvision.models.vit_b_16().eval(), torch.zeros(1, 3, 224, 224))
    assert abs(macs / 17.56e9 - 1) < 0.02  # torchvision's documented 17.56 GFLOPS (multiply-adds)
