"""Data parallelism: 2 gloo ranks x batch 8 compute what 1 process x batch 16 does (variable BatchNorm
statistics per branch, gradients, masks), and the run loop under torchrun trains the same model."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import dynprune as dp
from dynprune.train.distributed import average_gradients, shard, synced_batch_norm


def _net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                        nn.BatchNorm2d(8))
    return dp.convert(net, ["1:4", "2:4", "4:4"])


def _step(net, x):
    """Every branch on x (train mode), one backward; returns outputs, grads and BatchNorm state."""
    outs = []
    for b in range(3):
        with dp.use_branch(b):
            outs.append(net(x))
    loss = sum(o.square().mean() for o in outs)
    loss.backward()
    return outs


def _rank(rank, world, init, out):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.set_num_threads(1)
    net = _net().train()
    x = torch.randn(16, 3, 10, 10, generator=torch.Generator().manual_seed(1))
    with synced_batch_norm():
        outs = _step(net, shard(x, rank, world))
    average_gradients([p for p in net.parameters()])
    masks = [m.branch_mask(0) for _, m in dp.layers.dynamic_layers(net)]
    if rank == 0:
        torch.save({"outs": [o.detach() for o in outs], "grads": {k: p.grad for k, p in net.named_parameters()},
                    "state": net.state_dict(), "masks": masks}, out)
    dist.destroy_process_group()


def test_two_ranks_of_eight_equal_one_process_of_sixteen(tmp_path):
    net = _net().train()
    x = torch.randn(16, 3, 10, 10, generator=torch.Generator().manual_seed(1))
    outs = _step(net, x)
    mp.spawn(_rank, args=(2, f"file://{tmp_path / 'init'}", tmp_path / "rank0.pt"), nprocs=2)
    got = torch.load(tmp_path / "rank0.pt")
    for o, g in zip(outs, got["outs"]):  # rank 0 holds the first 8 images of each branch's output
        torch.testing.assert_close(g, o[:8].detach(), rtol=1e-5, atol=1e-5)
    for k, p in net.named_parameters():
        torch.testing.assert_close(got["grads"][k], p.grad, rtol=1e-4, atol=1e-6, msg=k)
    state = net.state_dict()  # per-branch running statistics of the variable BatchNorm
    assert any("aux_norms.0.running_mean" in k for k in state)
    for k, v in state.items():
        torch.testing.assert_close(got["state"][k], v, rtol=1e-5, atol=1e-6, msg=k)
    for a, b in zip(got["masks"], (m.branch_mask(0) for _, m in dp.layers.dynamic_layers(net))):
        assert torch.equal(a, b)


def test_a_batch_the_ranks_cannot_split_is_refused():
    with pytest.raises(ValueError, match="a batch of 6 cannot be split over 4 ranks"):
        shard((torch.zeros(6, 1), torch.zeros(6)), 1, 4)
    assert shard(torch.arange(6), 1, 3).tolist() == [2, 3]


def _same_row(a: dict, b: dict) -> None:
    """Two log rows with the same keys, floats equal to 1e-4 relative, everything else exactly."""
    assert a.keys() == b.keys(), (a, b)
    for k, v in a.items():
        assert (b[k] == pytest.approx(v, rel=1e-4, abs=1e-6)) if isinstance(v, float) else b[k] == v, (k, a, b)


def _torchrun(tmp_path, cfg_path, nproc, *extra, command="train"):
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "DYNPRUNE_PROGRESS": "lines"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m",
           "dynprune", command, str(cfg_path), *extra]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_torchrun_two_ranks_train_what_one_process_does(tmp_path):
    """ClassPruning's stages under `torchrun --nproc_per_node 2 -m dynprune train`: every logged value of the
    stages whose loss is a mean over images matches one process on the same global batch, and the joint
    stage's routing histogram and L_W too (its L_E, the entropy of a batch's routing, is computed per rank
    and is not compared); rank 0 alone writes the run folder."""
    import yaml

    from dynprune.outputs import RunLog

    from ..conftest import tiny_config

    for name, nproc in (("one", 1), ("two", 2)):
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(yaml.safe_dump(tiny_config(tmp_path / name, log_every=1, threads=1).model_dump(mode="json")))
        done = _torchrun(tmp_path, cfg, nproc)
        assert done.returncode == 0, done.stderr[-3000:]
    rows = {name: [r for r in RunLog(tmp_path / name / "log.jsonl").rows() if "loss" in r] for name in ("one", "two")}
    for a, b in zip(rows["one"], rows["two"]):
        assert (a["stage"], a["step"]) == (b["stage"], b["step"])
        if a["stage"] == "joint":  # the routing histogram is summed over the ranks: the global batch's
            assert b["hist"] == a["hist"] and b["L_W"] == pytest.approx(a["L_W"], rel=1e-4, abs=1e-6), (a, b)
        else:  # every logged value (loss, L_W, the classifier's accuracy) is the global batch's
            _same_row(a, b)
    assert len(rows["one"]) == len(rows["two"]) == 20
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


@pytest.mark.parametrize("command", ["search", "png"])
def test_torchrun_two_ranks_search_and_png_as_one_process(command, tmp_path):
    """`torchrun --nproc_per_node 2 -m dynprune search|png`: every logged loss of SLS's search and of PnG's
    phases equals one process's on the same global batch; rank 0 alone writes the run folder."""
    import yaml

    from dynprune.checkpoint import load_file
    from dynprune.outputs import RunLog

    from ..methods.test_png import png_config
    from ..methods.test_sls import _cfg as search_config

    for name, nproc in (("one", 1), ("two", 2)):
        if command == "search":
            cfg = search_config(tmp_path / name, 20, anneal_every=5, checkpoint_every=10)
        else:
            cfg = png_config(tmp_path / name)
        data = cfg.model_dump(mode="json")
        data.update(log_every=1, threads=1)
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(data))
        done = _torchrun(tmp_path, tmp_path / f"{name}.yaml", nproc, command=command)
        assert done.returncode == 0, done.stderr[-3000:]
    ckpt = "search.pt" if command == "search" else "last.pt"
    assert [load_file(tmp_path / name / ckpt)["run"]["processes"] for name in ("one", "two")] == [1, 2]
    log = "search_log.jsonl" if command == "search" else "log.jsonl"
    rows = {name: [r for r in RunLog(tmp_path / name / log).rows() if "loss" in r] for name in ("one", "two")}
    assert len(rows["one"]) == len(rows["two"]) >= 5
    for a, b in zip(rows["one"], rows["two"]):
        _same_row(a, b)  # every logged value: the global batch's
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


def test_ranks_with_different_configs_are_refused(tmp_path):
    import yaml

    from ..conftest import tiny_config

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(tmp_path / "run", threads=1).model_dump(mode="json")))
    script = tmp_path / "run_rank.py"  # rank 1 changes the seed
    script.write_text("import os, sys\nfrom dynprune.cli import main\n"
                      "extra = ['--set', 'seed=7'] if os.environ['RANK'] == '1' else []\n"
                      f"sys.exit(main(['train', {str(cfg)!r}, *extra]))\n")
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script)], cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "rank 1 was started with another config than rank 0: seed: 1 -> 7" in done.stderr


def _user_loop(rank, world, init, out):
    """The loop of docs/concepts.md ("dynprune inside your own distributed loop")."""
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = dp.convert(nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1)),
                     ["1:4", "2:4", "4:4"], srste_decay=0.01)
    model = nn.parallel.DistributedDataParallel(net)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(3):
        x = torch.randn(8, 4, 6, 6, generator=torch.Generator().manual_seed(step))[rank * 8 // world:][:8 // world]
        with dp.use_branch(step % 3):  # one forward and one backward per update, as DDP expects
            loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()  # SR-STE's decay enters here, once, on the averaged gradient
    if rank == 0:
        torch.save(net.state_dict(), out)
    # DDP's reducer holds gloo work: let every rank finish, and free it, before the group goes (else a rank's
    # exit can abort in gloo's threads at interpreter shutdown: "terminate called without an active exception")
    dist.barrier()
    del model, opt
    dist.destroy_process_group()


def test_a_converted_model_trains_inside_the_users_ddp_loop(tmp_path):
    mp.spawn(_user_loop, args=(1, f"file://{tmp_path / 'one'}", tmp_path / "one.pt"), nprocs=1)
    mp.spawn(_user_loop, args=(2, f"file://{tmp_path / 'two'}", tmp_path / "two.pt"), nprocs=2)
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-6, msg=k)
    assert not torch.equal(one["0.weight"], _fresh()["0.weight"])  # it trained


def _fresh():
    torch.manual_seed(0)
    return dp.convert(nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1)),
                      ["1:4", "2:4", "4:4"], srste_decay=0.01).state_dict()


def test_a_run_resumes_on_another_number_of_processes(tmp_path):
    """The checkpoint does not depend on the world size: a 2-rank run is extended in 1 process, and a
    1-process run is extended on 2 ranks."""
    import yaml

    from dynprune.outputs import RunLog

    from ..conftest import tiny_config

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(tmp_path / "run", threads=1).model_dump(mode="json")))
    done = _torchrun(tmp_path, cfg, 2)
    assert done.returncode == 0, done.stderr[-3000:]
    for nproc in (1, 2):  # extended in 1 process, then that extension extended again on 2 ranks
        done = _torchrun(tmp_path, cfg, nproc, "--resume", "--set", f"stages.joint.epochs={nproc + 1}")
        assert done.returncode == 0, done.stderr[-3000:]
        joint = [r["step"] for r in RunLog(tmp_path / "run" / "log.jsonl").rows() if r.get("stage") == "joint"
                 and "loss" in r]
        assert max(joint) == 5 * (nproc + 1) - 1


def test_a_gpu_run_under_torchrun_without_a_gpu_names_the_device(tmp_path, monkeypatch):
    """device: cuda under torchrun would pick NCCL; without a GPU the device is refused first, by name,
    before any process group (no rendezvous variables needed to see the message)."""
    from dynprune.methods.classpruning import Trainer

    from ..conftest import tiny_config

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"device 'cuda' is not available here \(0 CUDA device\(s\)\)"):
        Trainer(tiny_config(tmp_path, device="cuda"))
    assert not dist.is_initialized()
