"""The ClassPruning model: a difficulty classifier routing each image to one N:M branch."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .branch import each_branch, route
from .convert import model_ratios

__all__ = ["ClassPruning", "TrainOutput"]


class TrainOutput(NamedTuple):
    logits: torch.Tensor   # (B, L)
    probs: torch.Tensor    # (B, L) softmax
    outputs: list          # L tensors (B, C, H, W), one per branch, sparsest first


class ClassPruning(nn.Module):
    """Classifier Module + Restoration Module (paper Fig. 3).

    Args:
        restorer: a model converted by :func:`dynprune.convert` (L branches), or a
            :class:`dynprune.classsr.SeparateBranches` of L networks (ClassSR).
        classifier: maps (B, C, H, W) to (B, L) logits.
    Forward:
        training mode: :class:`TrainOutput` with every branch's output (for L_W/L_E/L_C);
        eval mode: the routed restoration (B, C, H, W): each image goes to its :meth:`classify` branch, the batch
        grouped by branch, one call per branch (no per-sample loop).
    Raises:
        ValueError: ``restorer`` is neither converted nor a SeparateBranches.
    """

    def __init__(self, restorer: nn.Module, classifier: nn.Module):
        super().__init__()
        labels = getattr(restorer, "branch_labels", None)
        self.ratios = tuple(labels) if labels is not None else model_ratios(restorer)
        self.restorer, self.classifier = restorer, classifier
        # lam * C_k per branch, float64 like the calibration (dynprune.budget); zeros = the paper's argmax
        self.register_buffer("route_penalty", torch.zeros(len(self.ratios), dtype=torch.float64))
        # side of the square tiles the classifier sees at inference (0 = the whole image); see route_log_probs
        self.register_buffer("classify_tile", torch.zeros((), dtype=torch.int64))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before budgets and tiles existed: argmax on the whole image
        state_dict.setdefault(prefix + "route_penalty", torch.zeros(len(self.ratios), dtype=torch.float64))
        state_dict.setdefault(prefix + "classify_tile", torch.zeros((), dtype=torch.int64))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def in_channels(self) -> int:
        """Image channels the model takes (those of the classifier's first convolution)."""
        return next(p for p in self.classifier.parameters() if p.dim() == 4).shape[1]

    def check_channels(self, named_images) -> None:
        """Check (name, (C, H, W) image) pairs against :attr:`in_channels`; no silent conversion.

        Raises:
            ValueError: the first image whose channel count differs (its name and both counts).
        """
        c = self.in_channels
        for name, im in named_images:
            if im.shape[0] != c:
                raise ValueError(f"image {name!r} has {im.shape[0]} channels but the model takes {c}; "
                                 f"convert the images (e.g. to {'gray' if c == 1 else 'RGB'}) first")

    @property
    def num_branches(self) -> int:
        return len(self.ratios)

    def route_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier's log-probabilities per image, float64 (B, L).

        With ``classify_tile`` = t > 0 and an image of at least t x t pixels, the classifier sees the
        t x t tiles of a grid covering the image (the last row and column aligned to the border) and the
        image's log-probabilities are the normalised mean of the tiles': a classifier trained on t x t
        crops then sees what it was trained on, whatever the image size (a global-pooling classifier
        trained on 96 px crops of haze is not calibrated on 481 x 321 images). t = 0: the whole image.
        """
        t = int(self.classify_tile)
        H, W = x.shape[-2:]
        if t <= 0 or H < t or W < t:
            return self.classifier(x).double().log_softmax(1)
        rows = sorted({*range(0, H - t + 1, t), H - t})
        cols = sorted({*range(0, W - t + 1, t), W - t})
        tiles = torch.stack([x[..., r:r + t, c:c + t] for r in rows for c in cols], dim=1)   # (B, n, C, t, t)
        logp = self.classifier(tiles.flatten(0, 1)).double().log_softmax(1).view(x.shape[0], len(tiles[0]), -1)
        return logp.mean(1).log_softmax(1)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Branch index per image, int64 (B,): ``argmax_k(log p_k - route_penalty_k)`` with p from
        :meth:`route_log_probs`; the penalty is 0 (the paper's argmax) unless a MACs budget was
        calibrated (:func:`dynprune.budget.calibrate_budget`)."""
        if not int(self.classify_tile) and not self.route_penalty.any():
            return self.classifier(x).argmax(1)
        return (self.route_log_probs(x) - self.route_penalty).argmax(1)

    def route(self, x: torch.Tensor, branches: torch.Tensor | None = None, tile: int = 0,
              overlap: int | None = None, approximate: bool = False,
              probe=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(restored (B, C, H, W), branch int64 (B,)); ``branches`` overrides the classifier.

        ``tile`` > 0: images larger than ``tile`` pixels on a side are restored in overlapping tiles
        (:func:`dynprune.tiling.tiled`) after the classifier chose the branch on the whole image, so routing
        does not change. Tiling is checked first (:func:`dynprune.tiling.tile_overlap`): ``overlap`` None is
        the restorer's receptive-field radius (exact); a smaller one, or a restorer whose output depends on
        the whole image, is refused unless ``approximate``. ``probe``: the restorer's
        :class:`~dynprune.tiling.TilingProbe` (measured once and kept when None; a deployed model cannot be
        probed, so pass the dynamic model's).

        Raises:
            ValueError: tiling that is not exact (see above), or a bad ``tile`` / ``overlap``.
        """
        if branches is None:
            branches = self.classify(x)
        if tile and max(x.shape[-2:]) > tile:
            from .tiling import probe_tiling, tile_overlap, tiled

            if probe is None:
                key = (x.shape[1], getattr(self.restorer, "scale", 1))
                probes = self.__dict__.setdefault("_tiling_probes", {})
                if key not in probes:
                    if any(getattr(m, "packed_inference", False) for m in self.restorer.modules()):
                        raise ValueError("a deployed model cannot be probed for its receptive field: pass "
                                         "probe=dynprune.tiling.probe_tiling(<the dynamic model's restorer>, C)")
                    probes[key] = probe_tiling(self.restorer, *key)
                probe = probes[key]
            overlap = tile_overlap(probe, tile, overlap, approximate)
            return route(lambda xb: tiled(self.restorer, xb, tile, overlap), x, branches), branches
        return route(self.restorer, x, branches), branches

    def forward(self, x: torch.Tensor):
        if not self.training:
            return self.route(x)[0]
        logits = self.classifier(x)
        outputs = each_branch(lambda i: self.restorer(x), self.num_branches)
        return TrainOutput(logits, logits.softmax(1), outputs)
