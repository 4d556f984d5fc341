"""The demo's self-check (.ci/run runs `dynprune demo --quick`, which exits 1 when the check fails)."""

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
