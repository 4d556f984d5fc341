"""Run configuration: ratios as users write them in YAML, plans inline."""

import pytest

from dynprune.config import load_config
from dynprune.plan import RatioPlan


def test_unquoted_yaml_ratios_read_back(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("convert: {ratios: [1:4, 2:4, 4:4]}\n")  # YAML 1.1: 64, 124, 244
    assert load_config(path).convert.ratios == ["1:4", "2:4", "4:4"]
    assert load_config(path, sets=["convert.ratios=[2:8, 8:8]"]).convert.ratios == ["2:8", "8:8"]
    path.write_text("convert: {ratios: [7, '4:4']}\n")
    with pytest.raises(ValueError, match="ratio 7 is a number, not 'N:M': quote ratios in YAML"):
        load_config(path)


def test_plan_files_are_read_inline(tmp_path):
    plan = RatioPlan({"dncnn.2": "1:8"}, name="p").save(tmp_path / "p.yaml")
    path = tmp_path / "c.yaml"
    path.write_text(f"convert: {{ratios: ['{plan}', '8:8']}}\n")
    ratios = load_config(path).convert.ratios
    assert ratios[0] == {"name": "p", "ratios": {"dncnn.2": "1:8"}} and ratios[1] == "8:8"
    path.write_text("convert: {ratios: ['missing.yaml', '8:8']}\n")
    with pytest.raises((ValueError, FileNotFoundError), match="missing.yaml"):
        load_config(path)
