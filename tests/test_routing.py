import pytest
import torch
from torch import nn

import dynprune as dp
from dynprune.classifier import DifficultyClassifier, create_classifier
from dynprune.classpruning import ClassPruning, TrainOutput


class Counting(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, []

    def forward(self, x):
        self.calls.append(x.shape[0])
        return self.inner(x)


def _restorer():
    return dp.convert(nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                    nn.Conv2d(8, 4, 3, padding=1))).eval()


def test_route_groups_by_branch_and_scatters_in_order():
    net = _restorer()
    counted = Counting(net)
    x = torch.randn(7, 4, 8, 8)
    branches = torch.tensor([2, 0, 1, 0, 2, 2, 0])
    with torch.no_grad():
        out = dp.route(counted, x, branches)
        for k in range(7):
            with dp.use_branch(int(branches[k])):
                torch.testing.assert_close(out[k:k + 1], net(x[k:k + 1]), rtol=1e-5, atol=1e-6)
    assert sorted(counted.calls) == [1, 3, 3]  # one call per distinct branch, not per sample


def test_route_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        dp.route(nn.Identity(), torch.randn(3, 2), torch.tensor([0, 1]))


def test_classpruning_eval_routes_to_argmax_and_train_returns_all_branches():
    torch.manual_seed(1)
    model = ClassPruning(_restorer(), DifficultyClassifier(4, 3, widths=(8, 8, 8, 8))).eval()
    x = torch.randn(6, 4, 16, 16)
    with torch.no_grad():
        logits = model.classifier(x)
        out, branches = model.route(x)
        assert torch.equal(branches, logits.argmax(1))
        torch.testing.assert_close(model(x), out)
        for k in range(6):
            with dp.use_branch(int(branches[k])):
                torch.testing.assert_close(out[k], model.restorer(x[k:k + 1])[0], rtol=1e-5, atol=1e-6)
    model.train()
    res = model(x)
    assert isinstance(res, TrainOutput) and len(res.outputs) == 3
    torch.testing.assert_close(res.probs.sum(1), torch.ones(6))


def test_classifier_size_and_timm_option():
    clf = DifficultyClassifier(1, 3)
    assert sum(p.numel() for p in clf.parameters()) == 288 + 9216 + 18432 + 55296 + 2 * (32 + 32 + 64 + 96) + 96 * 3 + 3
    pytest.importorskip("torchvision", reason="timm needs torchvision, not installed here")
    t = create_classifier("timm:resnet10t", in_channels=1, num_classes=3)
    assert t(torch.randn(2, 1, 32, 32)).shape == (2, 3)
    with pytest.raises(ValueError, match="unknown timm model"):
        create_classifier("timm:not_a_model")
    with pytest.raises(ValueError, match=r"unknown classifier 'vgg': expected one of \['classsr', 'paper'\] or 'timm:"):
        create_classifier("vgg")


class _Recording(nn.Module):
    """Brightness classifier (logits (5 - 10 m, 0, 10 m - 5) for the mean m) that records its input shapes."""

    def __init__(self):
        super().__init__()
        self.conv, self.shapes = nn.Conv2d(1, 3, 1), []
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([-10.0, 0.0, 10.0]).view(3, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([5.0, 0.0, -5.0]))

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        return self.conv(x).mean((2, 3))


def test_classify_tiles_average_the_tiles_log_probabilities():
    net = dp.convert(nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1)))
    model = ClassPruning(net, _Recording()).eval()
    x = torch.zeros(2, 1, 32, 64)
    x[:, :, :, 32:] = 0.8          # left tile dark (m = 0), right tile bright (m = 0.8)
    x[1] *= 0.5                    # second image: m = 0 and 0.4
    with torch.no_grad():
        model.classify_tile.fill_(32)
        logp = model.route_log_probs(x)
        tiles = torch.stack([model.classifier(x[..., :32]), model.classifier(x[..., 32:])], 1).double().log_softmax(2)
        torch.testing.assert_close(logp, tiles.mean(1).log_softmax(1))
        assert torch.equal(model.classify(x), logp.argmax(1))
        # a 40 x 70 image: rows {0, 8}, columns {0, 32, 38}: 6 tiles of 32 x 32 in one classifier call
        model.classifier.shapes.clear()
        model.classify(torch.rand(3, 1, 40, 70))
        assert model.classifier.shapes == [(18, 1, 32, 32)]
        # an image smaller than a tile is classified whole
        model.classifier.shapes.clear()
        model.classify(torch.rand(1, 1, 20, 70))
        assert model.classifier.shapes == [(1, 1, 20, 70)]
    sd = model.state_dict()
    del sd["classify_tile"]        # a checkpoint written before tiles existed
    model.load_state_dict(sd)
    assert int(model.classify_tile) == 0
