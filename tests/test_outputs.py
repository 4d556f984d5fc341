"""One writer per run folder and output file; --overwrite replaces a run only once the new one has started."""

import subprocess
import sys

import pytest
import yaml

from dynprune.methods.classpruning import Trainer
from dynprune.outputs import LOCK_NAME, FolderLock

from .conftest import tiny_config


def test_four_processes_racing_into_one_run_folder(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(tmp_path / "run").model_dump(mode="json")))
    procs = [subprocess.Popen([sys.executable, "-m", "dynprune", "train", str(cfg)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    assert sorted(rc for rc, _ in results) == [0, 2, 2, 2]
    for rc, err in results:
        if rc == 2:  # refused at once: in use, or (if it came late) a finished run without --resume
            assert "is in use by another dynprune process (pid " in err or "already holds a run" in err, err
    assert Trainer(tiny_config(tmp_path / "run"), resume=True).run.index == 4  # the winner's run, whole


def test_a_lock_of_a_dead_process_never_blocks(tmp_path):
    run = tmp_path / "run"
    code = (f"import sys; from dynprune.outputs import FolderLock; from pathlib import Path; "
            f"Path({str(run)!r}).mkdir(parents=True); FolderLock.acquire(Path({str(run / LOCK_NAME)!r}), 'x'); "
            f"sys.exit(0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0  # holds it, then dies
    assert (run / LOCK_NAME).read_text().strip().isdigit()
    Trainer(tiny_config(run)).fit()  # the stale lock file does not block


def test_a_held_lock_refuses_another_process_with_its_pid(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", f"import time; from pathlib import Path; from dynprune.outputs import "
                               f"FolderLock; FolderLock.acquire(Path({str(run / LOCK_NAME)!r}), 'x'); print('held', "
                               f"flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match=rf"run folder '.*run' is in use by another dynprune process "
                                             rf"\(pid {holder.pid}\)"):
            Trainer(tiny_config(run))
    finally:
        holder.kill()
        holder.wait()
    FolderLock.release(run / LOCK_NAME)


def test_overwrite_keeps_the_old_run_until_the_new_one_starts(tmp_path):
    Trainer(tiny_config(tmp_path)).fit()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    bad = tiny_config(tmp_path, degradation={"name": "gaussian_noise", "kwargs": {"sigmas": [15, 25]}})
    with pytest.raises(ValueError, match="has 2 levels but the model has 3 branches"):
        Trainer(bad, overwrite=True)  # a start-up check fails: the old run is untouched
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    t = Trainer(tiny_config(tmp_path, seed=5), overwrite=True)
    assert (tmp_path / "last.pt").read_bytes() == before["last.pt"]  # still there until fit() starts
    t.fit()
    assert (tmp_path / "last.pt").read_bytes() != before["last.pt"]


def test_four_processes_racing_to_deploy_one_file(trained, tmp_path):
    out = tmp_path / "model.pt"
    procs = [subprocess.Popen([sys.executable, "-m", "dynprune", "deploy", str(trained / "run/last.pt"), str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    assert sorted(rc for rc, _ in results) == [0, 2, 2, 2], results
    for rc, err in results:
        if rc == 2:
            assert "is in use by another dynprune process" in err or "exists: pass --overwrite" in err, err
    import dynprune

    assert dynprune.load(out) is not None  # the winner's artifact loads
