"""docs/concepts.md's minimal training method, run as written: registered in one line, trained by
``dynprune train``, resumed and extended like every method."""

import re
from pathlib import Path

import pytest
import torch
import yaml

from dynprune.cli import main
from dynprune.methods import METHODS, get_method
from dynprune.outputs import RunLog

from ..conftest import tiny_config

DOC = Path(__file__).resolve().parents[2] / "docs" / "concepts.md"


@pytest.fixture
def uniform():
    section = DOC.read_text().split("### Adding a training method", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert 25 <= len(code.strip().splitlines()) <= 50
    exec(compile(code, str(DOC), "exec"), {"__name__": "uniform_method"})
    yield get_method("uniform")
    METHODS.pop("uniform")


def test_the_documented_method_trains_resumes_and_extends(tmp_path, uniform):
    cfg = tiny_config(tmp_path / "run", method="uniform").model_dump(mode="json")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 0
    rows = RunLog(tmp_path / "run/log.jsonl").rows()
    assert [r["step"] for r in rows] == [0, 4] and len(rows[0]["L1"]) == 3
    ckpt = torch.load(tmp_path / "run/last.pt", weights_only=True)
    assert ckpt["run"]["totals"] == {"uniform": 5} and "restorer" not in ckpt
    cfg["stages"]["restoration"]["epochs"] = 2
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "--resume"]) == 0
    assert [r["step"] for r in RunLog(tmp_path / "run/log.jsonl").rows()] == [0, 4, 9]  # 5 steps more


def test_an_unknown_method_is_named(tmp_path, capsys):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tmp_path / "run", method="nope").model_dump(mode="json")))
    assert main(["train", str(path)]) == 2
    assert "unknown training method 'nope'; registered: classpruning, png, sls" in capsys.readouterr().err
