import os
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared real data (``DYNPRUNE_DATA``, set by .ci/run); tests skip with a reason without it."""
    root = os.environ.get("DYNPRUNE_DATA")
    if not root or not Path(root).is_dir():
        pytest.skip("real data not available: set DYNPRUNE_DATA to the shared data folder (.ci/run does)")
    return Path(root)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _reset_kernel() -> None:
    """Forget the built kernel's ISA choice and its one-time warning (the next call re-reads DYNPRUNE_ISA)."""
    from dynprune import sparse_cpu

    sparse_cpu._build.cache_clear()
    sparse_cpu._status.clear()


@pytest.fixture
def isa(request, monkeypatch):
    """Run a test on one kernel ISA path ("avx512" or "avx2", via DYNPRUNE_ISA); skip where it cannot run."""
    from dynprune import sparse_cpu

    monkeypatch.setenv("DYNPRUNE_ISA", request.param)
    _reset_kernel()
    status = sparse_cpu.kernel_status()
    if not status["available"]:
        monkeypatch.delenv("DYNPRUNE_ISA")
        _reset_kernel()
        pytest.skip(f"N:M CPU kernel ({request.param}) cannot run here: {status['reason']}")
    yield request.param
    monkeypatch.delenv("DYNPRUNE_ISA")
    _reset_kernel()


@pytest.fixture
def no_kernel(monkeypatch):
    """Make the N:M kernel unavailable (DYNPRUNE_ISA=none) for one test; ``sparse_cpu.kernel()`` warns again."""
    _reset_kernel()
    monkeypatch.setenv("DYNPRUNE_ISA", "none")
    yield
    monkeypatch.delenv("DYNPRUNE_ISA")
    _reset_kernel()


@pytest.fixture(params=["kernel", "torch"])
def mask_path(request, monkeypatch):
    """Run a test with the compiled mask kernel and with its torch fallback (DYNPRUNE_MASK_KERNEL=0)."""
    from dynprune import mask_cpu

    if request.param == "torch":
        monkeypatch.setenv("DYNPRUNE_MASK_KERNEL", "0")
    mask_cpu._library.cache_clear()
    if request.param == "kernel" and not mask_cpu.available():
        pytest.skip("the mask kernel cannot build here (no C compiler)")
    yield request.param
    monkeypatch.delenv("DYNPRUNE_MASK_KERNEL", raising=False)
    mask_cpu._library.cache_clear()
