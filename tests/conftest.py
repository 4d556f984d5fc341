import os
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def compile_works() -> None:
    """Skip unless this torch compiles (fullgraph) and exports a converted model on a chosen branch: probed
    once per session on a tiny network, since what fails is dynamo's tracing of the active branch (a
    ContextVar) on some torch builds, not a version number (2.14.1 compiles, 2.13.0 stops there)."""
    import dynprune as dp

    net = dp.convert(torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU()))
    x = torch.randn(1, 8, 6, 6)
    try:
        torch._dynamo.reset()
        with torch.no_grad(), dp.use_branch(0):
            torch.compile(net, backend="eager", fullgraph=True)(x)
            torch.export.export(net, (x,))
    except Exception as err:  # noqa: BLE001 - whatever the tracer raises is the reason to skip
        pytest.skip(f"torch {torch.__version__} cannot compile/export a converted model here: "
                    f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    finally:
        torch._dynamo.reset()


requires_compile = pytest.mark.usefixtures("compile_works")


def tiny_config(out_dir, **over):
    """A ClassPruning TrainConfig that trains a DnCNN-4x8 for 5 steps per stage on two skimage photographs."""
    from dynprune.config import TrainConfig

    stage = {"epochs": 1, "steps_per_epoch": 5, "batch_size": 4, "lr_start": 1e-3, "lr_end": 1e-5}
    cfg = {"model": {"name": "dncnn", "kwargs": {"depth": 4, "width": 8}},
           "classifier": {"name": "paper", "kwargs": {"widths": [4, 4, 8, 8]}},
           "dataset": {"name": "skimage_photos", "kwargs": {"names": ["camera", "coins"], "patch_size": 16,
                                                            "patches_per_image": 8}},
           "stages": {"base": stage, "classifier": stage, "restoration": stage, "joint": stage},
           "out_dir": str(out_dir), "checkpoint_every": 3, "seed": 1}
    cfg.update(over)
    return TrainConfig.model_validate(cfg)


def randomize_bn(model) -> None:
    """Non-trivial BatchNorm statistics and scales (seeded by the caller), so that folding them is tested."""
    from torch import nn

    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)


def vector_dncnn_int8():
    """A vector16 DnCNN (depth 6, width 32, randomized BatchNorms), eval mode, and 18 int8 calibration images
    (1, 40, 40): smooth random images with noise at sigma 15, 25 and 50."""
    import dynprune as dp

    torch.manual_seed(0)
    base = dp.create_model("dncnn", depth=6, width=32).eval()
    randomize_bn(base)
    net = dp.convert(base, pattern="vector16").eval()
    g = torch.Generator().manual_seed(1)
    clean = torch.nn.functional.avg_pool2d(torch.rand(6, 1, 40, 40, generator=g), 5, 1, 2)
    return net, torch.cat([clean + s / 255 * torch.randn(clean.shape, generator=g) for s in (15, 25, 50)])


def teacher_files(folder, n=1, **arch):
    """``n`` dense tiny DnCNN weight files (distinct random weights), as distillation teachers."""
    from dynprune.registry import create_model

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(n):
        torch.manual_seed(100 + k)
        path = folder / f"teacher{k}.pt"
        torch.save(create_model("dncnn", **{"depth": 4, "width": 8, **arch}).state_dict(), path)
        out.append({"name": "dncnn", "weights": str(path)})
    return out


def noisy_pairs(root, sigma: float, n: int = 3, size=(32, 32), channels: int = 1):
    """``n`` real-looking pairs in ``root/degraded`` and ``root/clean`` (8-bit PNGs, clean = smooth random
    images, degraded = clean + Gaussian noise of ``sigma`` on the 0-255 scale); returns the two folders."""
    from dynprune.imageio import write_image

    g = torch.Generator().manual_seed(int(sigma))
    for k in range(n):
        clean = torch.nn.functional.interpolate(torch.rand(1, channels, 8, 8, generator=g), size=size,
                                                mode="bilinear", align_corners=False)[0]
        write_image(clean, root / "clean" / f"{k}.png")
        write_image(clean + sigma / 255 * torch.randn(clean.shape, generator=g), root / "degraded" / f"{k}.png")
    return str(root / "degraded"), str(root / "clean")


@pytest.fixture
def killed_at(monkeypatch):
    """``with killed_at(stage, step): Trainer(cfg).fit()``: the run is killed (KeyboardInterrupt, as by
    Ctrl-C) when it reaches that stage index and step; the context expects it, and the trainer is whole again
    after it."""
    from contextlib import contextmanager

    from dynprune.methods.classpruning import Trainer

    original = Trainer._loss

    @contextmanager
    def kill(stage: int, step: int):
        def crashing(self, s, *a):
            if s == stage and self.step == step:
                raise KeyboardInterrupt("killed")
            return original(self, s, *a)

        monkeypatch.setattr(Trainer, "_loss", crashing)
        try:
            with pytest.raises(KeyboardInterrupt):
                yield
        finally:
            monkeypatch.setattr(Trainer, "_loss", original)

    return kill


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared real data (``DYNPRUNE_DATA``, set by .ci/run); tests skip with a reason without it."""
    root = os.environ.get("DYNPRUNE_DATA")
    if not root or not Path(root).is_dir():
        pytest.skip("real data not available: set DYNPRUNE_DATA to the shared data folder (.ci/run does)")
    return Path(root)


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """A tiny ClassPruning run trained through the CLI: ``run/`` (config ``cfg.yaml``, ``last.pt``,
    ``base.pt``) and ``clean/`` (camera.png, coins.png, 48 x 64 gray). Tests must not write into it."""
    import yaml

    from dynprune.cli import main
    from dynprune.imageio import write_image
    from dynprune.plugins.datasets import load_skimage

    root = tmp_path_factory.mktemp("cli")
    cfg = tiny_config(root / "run")
    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert main(["train", str(path)]) == 0
    images = root / "clean"
    for name, img in zip(("camera", "coins"), load_skimage(["camera", "coins"])):
        write_image(img[:, :48, :64], images / f"{name}.png")
    return root


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    """Install a fake third-party distribution: ``third_party(entry_points={name: module}, modules={module:
    source})`` writes the modules and a dist-info (``bad-plugins 1.0``) on sys.path; returns a fresh
    :class:`PluginHost` with autoload on. Modules and the process-wide host are reset afterwards."""
    import sys
    import textwrap

    from dynprune.registry import PluginHost, reset_host

    written = []

    def install(entry_points: dict[str, str], modules: dict[str, str]):
        for mod, src in modules.items():
            (tmp_path / f"{mod}.py").write_text(textwrap.dedent(src))
            written.append(mod)
        info = tmp_path / "bad_plugins-1.0.dist-info"
        info.mkdir(exist_ok=True)
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bad-plugins\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text("[dynprune]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.delenv("DYNPRUNE_DISABLE_PLUGIN_AUTOLOAD", raising=False)
        host = PluginHost()
        reset_host(host)
        return host

    yield install
    for mod in written:
        sys.modules.pop(mod, None)
    reset_host()


class _NaNNoise:
    """Degradation ``nan_noise``: the clean batch itself (labels drawn at random over 3 levels), with one NaN
    pixel in call ``nan_at`` (1-based), to make a run meet a non-finite loss at a known step."""

    levels = 3

    def __init__(self, nan_at: int = 8):
        self.calls, self.nan_at = 0, nan_at

    def describe_level(self, i):
        return str(i)

    def __call__(self, clean, generator=None, level=None):
        self.calls += 1
        y = clean.clone()
        if self.calls == self.nan_at:
            y[0, 0, 0, 0] = float("nan")
        return y, torch.randint(0, 3, (clean.shape[0],), generator=generator)


@pytest.fixture
def nan_noise():
    """Registers the degradation ``nan_noise`` (:class:`_NaNNoise`) for the test; the process-wide plugin host is
    reset afterwards."""
    from dynprune import hookimpl
    from dynprune.registry import PluginHost, reset_host

    class Plugin:
        @hookimpl
        def dynprune_register_degradations(self, register):
            register("nan_noise", _NaNNoise)

    reset_host(PluginHost(plugins={"nan": Plugin()}))
    yield
    reset_host()


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


@pytest.fixture
def no_lowp_kernels(monkeypatch):
    """``with no_lowp_kernels(): ...`` runs its block as on a CPU without the int8 and bf16 kernels (DYNPRUNE_ISA=avx2:
    the fp32 kernels still run); their fallbacks warn again inside it. Skips where those kernels never run."""
    from contextlib import contextmanager

    from dynprune import sparse_cpu

    if not (sparse_cpu.has_int8_kernel() and sparse_cpu.has_bf16_kernel()):
        pytest.skip("the int8/bf16 kernels do not run here (need AVX-512 VNNI + VBMI + BF16): nothing to compare with")

    @contextmanager
    def without():
        monkeypatch.setenv("DYNPRUNE_ISA", "avx2")
        _reset_kernel()
        try:
            yield
        finally:
            monkeypatch.delenv("DYNPRUNE_ISA")
            _reset_kernel()

    return without
