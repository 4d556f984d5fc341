"""Re-run every case of the hostile tester's report (issue 13) and print tried / good.

The cases are the tests of ``tests/test_bad_inputs.py`` (one per line of the report, parametrized where a
line names several inputs); a case is good when dynprune refuses it with the expected message, or reads
the input correctly. Prints one row per case and the count.

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
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
                    str(root / "tests" / "test_bad_inputs.py")], cwd=root, check=False, capture_output=True)
    cases = ET.parse(junit).getroot().iter("testcase")
    rows = []
    for case in cases:
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        skipped = case.find("skipped") is not None
        rows.append((case.get("name"), "skipped" if skipped else "bad" if bad is not None else "good",
                     (bad.get("message") or "")[:80] if bad is not None else ""))
    print("| case | result | |\n|---|---|---|")
    for name, result, why in rows:
        print(f"| {name} | {result} | {why} |")
    good = sum(r == "good" for _, r, _ in rows)
    print(f"\ntried {len(rows)}, good {good} ({100 * good / max(len(rows), 1):.0f}%)")
    sys.exit(0 if good == len(rows) else 1)


if __name__ == "__main__":
    main()
