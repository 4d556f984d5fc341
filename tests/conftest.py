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
