"""Re-run every hostile case (the testers' reports of issues 13 and 35) and print tried / good.

The cases are tests (one per line of the reports, parametrized where a line names several inputs):
``tests/test_bad_inputs.py`` (bad inputs, hostile files, unwritable outputs), ``test_outputs.py`` (racing
writers, links in output folders, a full disk), ``test_tiling.py`` (tiling that would change the output),
``test_checkpoint.py`` (flips, truncations, old files) and the crafted-file, inference-only and stale-demo
tests of ``test_deployment.py`` and ``test_demo.py``. A case is good when dynprune refuses it with the
expected message, or handles the input correctly. Prints one row per case and the count.

    python benchmarks/hostile_cases.py [--junit FILE]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--junit", type=Path, help="keep pytest's JUnit XML here (default: a temporary file)")
    args = ap.parse_args()
    root = Path(__file__).resolve().parents[1]
    junit = args.junit or Path(tempfile.mkdtemp()) / "cases.xml"
    tests = [f"tests/{name}.py" for name in ("test_bad_inputs", "test_outputs", "test_tiling", "test_checkpoint")]
    tests += ["tests/test_deployment.py", "tests/test_demo.py"]
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *tests,
                    "-k", "not (test_deployment or test_demo) or crafted or dense_packed or inference_only or stale"],
                   cwd=root, check=False, capture_output=True)
    cases = ET.parse(junit).getroot().iter("testcase")
    rows = []
    for case in cases:
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        skipped = case.find("skipped") is not None
        rows.append((f"{case.get('classname').rsplit('.', 1)[-1]}::{case.get('name')}", "skipped" if skipped else "bad" if bad is not None else "good",
                     (bad.get("message") or "")[:80] if bad is not None else ""))
    print("| case | result | |\n|---|---|---|")
    for name, result, why in rows:
        print(f"| {name} | {result} | {why} |")
    good = sum(r == "good" for _, r, _ in rows)
    print(f"\ntried {len(rows)}, good {good} ({100 * good / max(len(rows), 1):.0f}%)")
    sys.exit(0 if good == len(rows) else 1)


if __name__ == "__main__":
    main()
