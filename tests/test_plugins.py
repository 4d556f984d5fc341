import sys
import textwrap

import pytest
import torch

from dynprune import hookimpl
from dynprune.registry import KINDS, PluginHost, create_model, list_models, reset_host

BUILTIN = {"models": ["dncnn"], "degradations": ["gaussian_noise"], "labelers": ["level", "residual_variance"],
           "losses": ["charbonnier", "l1", "mse"], "datasets": ["image_folder", "skimage_photos"],
           "classifiers": ["classsr", "paper"]}


def test_builtins_register_through_entry_points():
    host = PluginHost()
    for kind in KINDS:
        assert set(BUILTIN[kind]) <= set(host.names(kind))
    assert host.entry("models", "dncnn").distribution.startswith("dynprune ")
    assert list_models("dn*") == ["dncnn"]
    assert host.entry("models", "dncnn").paper["sigma=25"].startswith("paper DnCNN 29.18")  # eval prints it


class _PaperTyped:
    @hookimpl
    def dynprune_register_models(self, register):
        register("toy", lambda: None, paper={"sigma=25": 29.1})


def test_paper_figures_must_be_text():
    with pytest.raises(TypeError, match=r"model 'toy' with paper=\{'sigma=25': 29.1\}"):
        PluginHost(plugins={"typed": _PaperTyped()})


def test_unknown_name_lists_registered():
    with pytest.raises(ValueError, match="unknown model 'unet'; registered: .*dncnn"):
        create_model("unet")


class _Dup:
    @hookimpl
    def dynprune_register_models(self, register):
        register("dncnn", lambda: None)


def test_duplicate_names_rejected():
    with pytest.raises(ValueError, match="duplicate model name 'dncnn'.*'dncnn'.*'dup'"):
        PluginHost(plugins={"dup": _Dup()})


@pytest.fixture
def outside_distribution(tmp_path, monkeypatch):
    """A real installed distribution (dist-info with entry_points.txt) on sys.path."""
    pkg = tmp_path / "toy_backbone.py"
    pkg.write_text(textwrap.dedent("""
        import torch
        from dynprune import hookimpl

        class Toy(torch.nn.Module):
            def __init__(self, channels=1):
                super().__init__()
                self.conv = torch.nn.Conv2d(channels, channels, 1)
            def forward(self, x):
                return self.conv(x)

        @hookimpl
        def dynprune_register_models(register):
            register("toy", Toy, "a third-party backbone")
    """))
    info = tmp_path / "toy_backbone-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-backbone\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text("[dynprune]\ntoy = toy_backbone\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("toy_backbone", None)
    reset_host()


def test_outside_plugin_through_entry_point(outside_distribution, monkeypatch):
    monkeypatch.delenv("DYNPRUNE_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    host = PluginHost()
    assert host.distributions["toy"] == "toy-backbone 0.3"
    entry = host.entry("models", "toy")
    assert entry.distribution == "toy-backbone 0.3" and entry.description == "a third-party backbone"
    model = host.create("models", "toy", channels=2)
    assert model(torch.zeros(1, 2, 4, 4)).shape == (1, 2, 4, 4)
    reset_host(host)
    assert "toy" in list_models()


def test_autoload_off_and_block(outside_distribution, monkeypatch):
    monkeypatch.setenv("DYNPRUNE_DISABLE_PLUGIN_AUTOLOAD", "1")
    host = PluginHost()
    assert "toy" not in host.names("models") and "dncnn" in host.names("models")
    monkeypatch.delenv("DYNPRUNE_DISABLE_PLUGIN_AUTOLOAD")
    monkeypatch.setenv("DYNPRUNE_BLOCK_PLUGINS", "toy,noise")
    host = PluginHost()
    assert "toy" not in host.names("models") and "gaussian_noise" not in host.names("degradations")


def test_cli_lists_plugins(capsys):
    from dynprune.cli import main

    reset_host()
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "plugin dncnn: dynprune 0.1.0" in out and "gaussian_noise" in out
