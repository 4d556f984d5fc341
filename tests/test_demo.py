"""The demo's self-check (`dynprune demo` and `--quick` exit 1 when the check fails; .ci/run runs `--quick`)."""

from dynprune.demo import check_result


def _result(rows):
    return {"ratios": ["1:4", "2:4", "4:4"], "conditions": {
        label: {"models": {"degraded input": {"psnr": inp}, **{f"branch {r}": {"psnr": v}
                                                               for r, v in zip(["1:4", "2:4", "4:4"], vals)}}}
        for label, (inp, vals) in rows.items()}}


def test_a_good_run_passes():
    assert check_result(_result({"sigma=15": (24.72, (29.1, 29.4, 29.5)), "sigma=50": (15.0, (24.0, 24.4, 24.3))})) == []


def test_the_user_report_fails_the_check():
    """The AMD report of issue 33: 4:4 at 15.24 dB on sigma 15 (input 24.72), 1:4 at 16.00 dB on sigma 50."""
    bad = check_result(_result({"sigma=15": (24.72, (29.2, 28.9, 15.24)), "sigma=50": (15.03, (16.00, 21.5, 24.3))}))
    assert bad == ["sigma=15: branch 4:4 gives 15.24 dB, not above the degraded input's 24.72 dB",
                   "sigma=15: branch 4:4 gives 15.24 dB, more than 0.5 dB below branch 2:4's 28.90 dB"]
    assert check_result(_result({"sigma=25": (20.46, (26.0, 25.2, 26.5))})) == [
        "sigma=25: branch 2:4 gives 25.20 dB, more than 0.5 dB below branch 1:4's 26.00 dB"]


def test_a_stale_demo_folder_is_refused_and_overwrite_trains_afresh(tmp_path, monkeypatch):
    """A folder holding an older dynprune's demo run (other settings) is refused with the way out named;
    ``--overwrite`` trains from scratch there. The demo's config is swapped for a 5-step one."""
    import pytest

    import dynprune.demo as demo
    import dynprune.evaluate
    from dynprune.cli import main
    from dynprune.methods.classpruning import Trainer
    from .conftest import tiny_config

    Trainer(tiny_config(tmp_path / "quick", seed=2)).fit()  # the "older" run
    old = (tmp_path / "quick" / "last.pt").stat().st_mtime_ns
    monkeypatch.setattr(demo, "demo_config", lambda out, quick, device: tiny_config(out))

    class Trained(Exception):
        pass

    def stop(*a, **k):
        raise Trained

    monkeypatch.setattr(dynprune.evaluate, "evaluate", stop)
    with pytest.raises(ValueError, match=r"differs from this one in seed: 2 -> 1[\s\S]*demo --overwrite"):
        demo.run_demo(str(tmp_path), quick=True)
    assert (tmp_path / "quick" / "last.pt").stat().st_mtime_ns == old  # refused: nothing touched
    with pytest.raises(Trained):
        main(["demo", "--quick", "--overwrite", "--out", str(tmp_path)])
    assert (tmp_path / "quick" / "last.pt").stat().st_mtime_ns != old


def test_quick_runs_are_checked_with_a_wider_monotone_tolerance():
    from dynprune.demo import QUICK_TOLERANCE_DB

    rows = {"sigma=50": (15.03, (20.0, 22.9, 22.2))}  # 4:4 0.7 dB below 2:4
    assert check_result(_result(rows), QUICK_TOLERANCE_DB) == []
    assert check_result(_result(rows)) == ["sigma=50: branch 4:4 gives 22.20 dB, more than 0.5 dB below branch 2:4's 22.90 dB"]
