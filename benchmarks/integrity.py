"""Integrity of dynprune's files: random corruption is refused, and the SHA-256 digest costs little.

Two parts, on the released ClassPruning DnCNN-B (``docs/checkpoints/cp_dncnn_b.pt``) and its deployed
artifact (``deploy(model, "cpu")`` saved to a temporary folder):

- ``corruption``: ``--flips`` random single-bit flips and ``--truncations`` random truncations of each file
  (seeded). Each damaged copy is loaded the way dynprune loads it (``load_file``, then ``load_trained`` /
  ``load_deployed``); it is ``refused`` (a ``ValueError`` naming the file as corrupt or unreadable),
  ``identical`` (it loads, and every tensor and value equals the original's: a flip in zip padding or a
  field torch does not read, so the outputs are the original's), or ``SILENT`` (it loads with other
  content: wrong images without an error). Exit status 1 if any is ``SILENT``.
- ``cost``: save and load times with the digest against the same code without it (``--rounds``
  interleaved rounds, medians): ``save`` is ``save_atomic`` (temporary file, fsync, rename) with and
  without computing the digest; ``load file`` is ``load_file`` against ``torch.load(weights_only=True)``;
  ``load model`` adds rebuilding the model (``load_trained``, or ``load_deployed``: repacking included).

    python benchmarks/integrity.py [--part corruption|cost|all] [--flips 200] [--truncations 50] [--rounds 15]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import dynprune.checkpoint as ck
from dynprune.deploy import deploy, load_deployed, save_deployed
from dynprune.models import load_trained
from dynprune.outputs import write_output
from dynprune.sparse_cpu import cpu_name

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "docs" / "checkpoints" / "cp_dncnn_b.pt"


def same(a, b) -> bool:
    """Exact equality of two loaded contents (tensors bit for bit, dtype and shape included)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def files(tmp: Path) -> dict[str, tuple[Path, callable]]:
    """{name: (path, load the model from it)} for the checkpoint and its deployed artifact."""
    model, cfg, ckpt = load_trained(CKPT)
    artifact = save_deployed(deploy(model, "cpu"), tmp / "deployed.pt", cfg.model_dump(mode="json"),
                             ckpt.get("arch", {}), run=ckpt.get("run"))
    return {"checkpoint": (CKPT, lambda p: load_trained(p)), "deployed artifact": (artifact, lambda p: load_deployed(p))}


def corruption(tmp: Path, flips: int, truncations: int, seed: int = 0) -> bool:
    print(f"\n## Corruption: {flips} single-bit flips and {truncations} truncations per file (seed {seed})\n")
    print("| file | size (bytes) | damage | tried | refused | identical | SILENT |\n|---|---:|---|---:|---:|---:|---:|")
    ok = True
    for name, (path, load_model) in files(tmp).items():
        data = path.read_bytes()
        ref = ck.load_file(path)
        rng = random.Random(seed)
        for damage, count in (("bit flip", flips), ("truncation", truncations)):
            tally = {"refused": 0, "identical": 0, "SILENT": 0}
            for k in range(count):
                bad = bytearray(data)
                if damage == "bit flip":
                    i = rng.randrange(len(bad))
                    bad[i] ^= 1 << rng.randrange(8)
                else:
                    bad = bad[: rng.randrange(len(bad))]
                p = tmp / f"damaged{path.suffix}"
                p.write_bytes(bytes(bad))
                try:
                    got = ck.load_file(p)
                    load_model(p)
                except ValueError as err:
                    assert "corrupt" in str(err) or "cannot read" in str(err), err
                    tally["refused"] += 1
                    continue
                tally["identical" if same(got, ref) else "SILENT"] += 1
            ok &= tally["SILENT"] == 0
            print(f"| {name} | {len(data)} | {damage} | {count} | {tally['refused']} | {tally['identical']} | "
                  f"{tally['SILENT']} |")
    return ok


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return 1e3 * (time.perf_counter() - t0)


def cost(tmp: Path, rounds: int) -> None:
    print(f"\n## Cost of the digest ({rounds} interleaved rounds, median ms; 1 thread)\n")
    print("| file | operation | without digest | with digest | ratio |\n|---|---|---:|---:|---:|")
    torch.set_num_threads(1)
    for name, (path, load_model) in files(tmp).items():
        obj = ck.load_file(path)
        out = tmp / "timed.pt"

        def save_plain():
            write_output(out, lambda f: torch.save(obj, f))

        def load_plain():
            torch.load(out, map_location="cpu", weights_only=True)

        def load_model_plain():  # the same model loading with the digest check switched off
            verify, ck.verify = ck.verify, lambda o, p: o.pop(ck.DIGEST_KEY, None)
            try:
                load_model(out)
            finally:
                ck.verify = verify

        ops = {"save": (save_plain, lambda: ck.save_atomic(obj, out)),
               "load file": (load_plain, lambda: ck.load_file(out)),
               "load model": (load_model_plain, lambda: load_model(out))}
        ck.save_atomic(obj, out)
        for op, (plain, checked) in ops.items():
            times = {"plain": [], "checked": []}
            for r in range(rounds + 1):
                for key, fn in (("plain", plain), ("checked", checked))[:: 1 if r % 2 else -1]:
                    t = timed(fn)
                    if r:  # round 0 warms up
                        times[key].append(t)
                    if op == "save":
                        ck.save_atomic(obj, out)  # the loads below read a file with its digest
            a, b = statistics.median(times["plain"]), statistics.median(times["checked"])
            print(f"| {name} ({path.stat().st_size / 2 ** 20:.1f} MiB) | {op} | {a:.1f} | {b:.1f} | {b / a:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["corruption", "cost", "all"], default="all")
    ap.add_argument("--flips", type=int, default=200)
    ap.add_argument("--truncations", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    print(f"CPU: {cpu_name()}; torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as d:
        ok = True
        if args.part in ("corruption", "all"):
            ok = corruption(Path(d), args.flips, args.truncations)
        if args.part in ("cost", "all"):
            cost(Path(d), args.rounds)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
