"""Sharded FSDP checkpoints (the 7B recipes' `state_dict_type: sharded`) are atomic: two processes
(gloo, CPU) save through `IllumeFSDPStrategy.save_checkpoint`, the strategy the recipes name. A
save that fails on one rank mid-way leaves the previous checkpoint whole and loadable, and the
next save succeeds and leaves nothing of the failed one behind.

Lightning refuses FSDP training on a CPU (its FSDPStrategy needs a GPU accelerator), so the
processes call the strategy's save directly on plain tensors, as its checkpoint callback would
with the shards of an FSDP module: the folder layout, torch.distributed.checkpoint's writer and
rank 0's metadata file are Lightning's own.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

CHILD = """
import os, sys
from pathlib import Path

import torch
import torch.distributed as dist
from lightning.fabric.plugins.environments import LightningEnvironment

from illume_trainer.strategies import IllumeFSDPStrategy

rank, root = int(sys.argv[1]), Path(sys.argv[2])
dist.init_process_group("gloo", rank=rank, world_size=2)
strategy = IllumeFSDPStrategy(state_dict_type="sharded")
environment = LightningEnvironment()
environment.set_global_rank(rank)
environment.set_world_size(2)
strategy.cluster_environment = environment


def checkpoint(version):
    # a tensor every rank holds, and one shard per rank
    weights = {"shared": torch.full((4,), float(version)), f"shard{rank}": torch.full((3,), version + rank / 10)}
    return {"state_dict": weights, "optimizer_states": [], "epoch": version}


strategy.save_checkpoint(checkpoint(1), root / "last.ckpt")
failing = checkpoint(2)
if rank == 1:  # rank 1 cannot write its part of the second save (a lock does not pickle)
    import threading

    failing["state_dict"]["broken"] = threading.Lock()
try:
    strategy.save_checkpoint(failing, root / "last.ckpt")
except BaseException as error:  # DCP raises CheckpointException, a BaseException
    print(f"rank {rank}: second save failed: {type(error).__name__}", flush=True)
else:
    raise SystemExit(f"rank {rank}: the failing save succeeded")
dist.barrier()
if rank == 0:  # the previous checkpoint, whole: its metadata and every rank's tensors
    import torch.distributed.checkpoint as dcp

    assert torch.load(root / "last.ckpt" / "meta.pt", weights_only=True)["epoch"] == 1
    state = {"model": {"shared": torch.zeros(4), "shard0": torch.zeros(3), "shard1": torch.zeros(3)}}
    dcp.load(state, checkpoint_id=root / "last.ckpt", no_dist=True)
    assert torch.equal(state["model"]["shared"], torch.ones(4)), state
    assert torch.allclose(state["model"]["shard0"], torch.ones(3)), state
Path(root / f"after_failure_{rank}").write_text("ok")
dist.barrier()
strategy.save_checkpoint(checkpoint(3), root / "last.ckpt")
dist.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two processes: ~15 s
def test_a_sharded_save_that_fails_on_one_rank_leaves_the_previous_checkpoint(tmp_path):
    import torch.distributed.checkpoint as dcp

    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    env.pop("ILLUME_TRACEBACK", None)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    children = [
        subprocess.Popen(
            [sys.executable, str(script), str(rank), str(tmp_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [child.communicate(timeout=240)[0] for child in children]
    for child, output in zip(children, outputs, strict=True):
        assert child.returncode == 0, output[-3000:]
    assert all("second save failed" in output for output in outputs)
    assert (tmp_path / "after_failure_0").is_file() and (tmp_path / "after_failure_1").is_file()
    # the third save is in place, with every rank's shard; nothing of the failed save remains
    checkpoint = tmp_path / "last.ckpt"
    assert torch.load(checkpoint / "meta.pt", weights_only=True)["epoch"] == 3
    state = {
        "model": {
            "shared": torch.zeros(4),
            "shard0": torch.zeros(3),
            "shard1": torch.zeros(3),
        }
    }
    dcp.load(state, checkpoint_id=checkpoint, no_dist=True)
    assert torch.equal(state["model"]["shared"], torch.full((4,), 3.0))
    assert torch.allclose(state["model"]["shard1"], torch.full((3,), 3.1))
    leftovers = sorted(p.name for p in Path(tmp_path).iterdir() if p.name.startswith(".last.ckpt"))
    assert leftovers == [], leftovers
