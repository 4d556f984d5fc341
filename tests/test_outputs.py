"""One writer per run folder and output file; --overwrite replaces a run only once the new one has started."""

import os
import shutil
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


# ---- write_output: never through a link, exclusive when new, disk full -----------------------------------
def test_outputs_replace_links_instead_of_writing_through_them(tmp_path):
    from dynprune.outputs import write_text

    victim = tmp_path / "input.png"
    victim.write_bytes(b"the user's image")
    out = tmp_path / "out"
    out.mkdir()
    (out / "soft.png").symlink_to(victim)
    os.link(victim, out / "hard.png")
    for name in ("soft.png", "hard.png"):
        write_text(out / name, "restored")
        assert (out / name).read_text() == "restored" and not (out / name).is_symlink()
    assert victim.read_bytes() == b"the user's image"
    with pytest.raises(ValueError, match="appeared while dynprune wrote it"):
        write_text(out / "soft.png", "again", replace=False)  # an exclusive output that exists by now
    (tmp_path / "elsewhere").mkdir()
    (out / "sub").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="outside the output folder"):
        write_text(out / "sub" / "x.txt", "x", root=out)
    assert list(tmp_path.joinpath("elsewhere").iterdir()) == [] and sorted(p.name for p in out.iterdir()) == [
        "hard.png", "soft.png", "sub"]  # no temporary file left behind


def test_a_full_disk_is_one_clear_error_and_the_old_file_stays(tmp_path):
    import errno

    from dynprune.checkpoint import load_file, save_atomic
    from dynprune.outputs import write_output

    save_atomic({"step": 1}, tmp_path / "last.pt")

    def full(f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(ValueError, match=r"cannot write .*last.pt': the disk is full; the previous file is intact"):
        write_output(tmp_path / "last.pt", full)
    assert load_file(tmp_path / "last.pt")["step"] == 1 and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_restore_never_writes_through_a_link_in_its_output_folder(trained, tmp_path):
    from dynprune.cli import main

    inputs = tmp_path / "in"
    shutil.copytree(trained / "clean", inputs)
    before = (inputs / "camera.png").read_bytes()
    out = tmp_path / "out"
    assert main(["restore", str(trained / "run/last.pt"), str(inputs), str(out)]) == 0
    (out / "camera.png").unlink()
    (out / "camera.png").symlink_to(inputs / "camera.png")  # planted after an earlier restore
    assert main(["restore", str(trained / "run/last.pt"), str(inputs), str(out)]) == 0
    assert (inputs / "camera.png").read_bytes() == before and not (out / "camera.png").is_symlink()
    (out / "side_by_side").symlink_to(inputs)
    assert main(["restore", str(trained / "run/last.pt"), str(inputs), str(out), "--clean", str(inputs)]) == 2
    assert sorted(p.name for p in inputs.iterdir()) == ["camera.png", "coins.png"]


def test_outputs_get_the_permissions_of_a_plain_open(tmp_path):
    from dynprune.outputs import write_text

    (tmp_path / "plain.txt").write_text("x")
    write_text(tmp_path / "ours.txt", "x")
    assert (tmp_path / "ours.txt").stat().st_mode == (tmp_path / "plain.txt").stat().st_mode
