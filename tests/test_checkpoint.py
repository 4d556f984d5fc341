"""Checkpoint integrity: a digest written with every dynprune file, checked at load."""

import random

import pytest
import torch

from dynprune.checkpoint import DIGEST_KEY, load_file, save_atomic


def _state():
    torch.manual_seed(0)
    return {"model": {"w": torch.randn(64, 32), "b": torch.randn(64).to(torch.bfloat16)},
            "config": {"seed": 1, "ratios": ["1:4", "4:4"]}, "step": 7, "arch": {"depth": 4}}


def test_a_digest_is_written_and_checked(tmp_path):
    path = save_atomic(_state(), tmp_path / "c.pt")
    raw = torch.load(path, weights_only=True)
    assert len(raw[DIGEST_KEY]) == 64
    back = load_file(path)
    assert DIGEST_KEY not in back and torch.equal(back["model"]["w"], _state()["model"]["w"])
    raw["model"]["w"][3, 5] += 1e-3  # an edited (or damaged) value, saved without a new digest
    torch.save(raw, tmp_path / "edited.pt")
    with pytest.raises(ValueError, match=r"edited.pt' is corrupt: its content does not match the SHA-256 digest"):
        load_file(tmp_path / "edited.pt")


def test_files_without_a_digest_still_load(tmp_path, caplog):
    torch.save(_state(), tmp_path / "old.pt")
    with caplog.at_level("INFO", logger="dynprune.checkpoint"):
        assert load_file(tmp_path / "old.pt")["step"] == 7
        load_file(tmp_path / "old.pt")
    assert sum("no integrity digest" in r.message for r in caplog.records) == 1  # one notice


def test_random_bit_flips_and_truncations_never_load_silently(tmp_path):
    path = save_atomic(_state(), tmp_path / "c.pt")
    data = bytearray(path.read_bytes())
    ref = load_file(path)
    rng = random.Random(0)
    outcomes = {"refused": 0, "identical": 0}
    for k in range(60):
        bad = bytearray(data)
        if k < 50:
            i = rng.randrange(len(bad))
            bad[i] ^= 1 << rng.randrange(8)
        else:
            bad = bad[: rng.randrange(len(bad))]
        p = tmp_path / f"bad{k}.pt"
        p.write_bytes(bytes(bad))
        try:
            got = load_file(p)
        except ValueError as err:
            assert "corrupt" in str(err)
            outcomes["refused"] += 1
            continue
        # a flip in zip padding or a field torch does not read: the content must be exactly the same
        assert torch.equal(got["model"]["w"], ref["model"]["w"]) and got["config"] == ref["config"]
        assert torch.equal(got["model"]["b"], ref["model"]["b"]) and got["step"] == ref["step"]
        outcomes["identical"] += 1
    assert outcomes["refused"] >= 40, outcomes
