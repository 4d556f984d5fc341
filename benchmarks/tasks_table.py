"""The Markdown tables of docs/results.md ("Deraining, deblurring, dehazing") from `dynprune eval` reports:
one row per condition (PSNR dB / SSIM of the degraded input, the dense base, each branch and the routed
model; routed MACs as % of dense; routing histogram), then the means over the synthetic levels
(conditions not starting with "real") that the summary table quotes.

    python benchmarks/tasks_table.py docs/results/rescan_derain/report.json [more reports]

Raises:
    KeyError: a report without a dense reference (run `dynprune eval` with --dense or a run's base.pt).
"""

from __future__ import annotations

import json
import sys


def table(report: dict) -> list[str]:
    """Markdown rows for one report (the layout of docs/results.md)."""
    ratios = report["ratios"]
    cols = ["degraded input", "dense"] + [f"branch {r}" for r in ratios] + ["routed"]
    lines = ["| condition | degraded input | dense base | " + " | ".join(f"branch {r}" for r in ratios)
             + " | routed | routed - dense | routed MACs | routing " + " / ".join(ratios) + " |",
             "|---" + "|---:" * (len(cols) + 2) + "|---|"]
    for label, c in report["conditions"].items():
        m = c["models"]
        cells = " | ".join(f"{m[k]['psnr']:.2f} / {m[k]['ssim']:.3f}" for k in cols)
        lines.append(f"| {label} | {cells} | {m['routed']['psnr'] - m['dense']['psnr']:+.2f} dB | "
                     f"{100 * c['routed_macs_fraction']:.1f}% | " + " / ".join(str(c["histogram"][r]) for r in ratios) + " |")
    return lines


def means(report: dict) -> str:
    """Routed - dense (dB), routed MACs (%) and dense - degraded input (dB), averaged over synthetic levels."""
    syn = [c for label, c in report["conditions"].items() if not label.startswith("real")]
    gap = [c["models"]["routed"]["psnr"] - c["models"]["dense"]["psnr"] for c in syn]
    gain = [c["models"]["dense"]["psnr"] - c["models"]["degraded input"]["psnr"] for c in syn]
    macs = [100 * c["routed_macs_fraction"] for c in syn]
    n = len(syn[0]["images"]) if syn else 0
    fmt = lambda xs: " / ".join(f"{x:+.2f}" for x in xs)  # noqa: E731
    return (f"{len(syn)} synthetic levels x {n} images: routed - dense {sum(gap) / len(gap):+.2f} dB ({fmt(gap)}), "
            f"routed MACs {sum(macs) / len(macs):.1f}%, dense - input {sum(gain) / len(gain):+.2f} dB ({fmt(gain)})")


def main(paths: list[str]) -> None:
    for path in paths:
        report = json.load(open(path))
        print(f"{path}\n")
        print("\n".join(table(report)))
        print(f"\n{means(report)}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
