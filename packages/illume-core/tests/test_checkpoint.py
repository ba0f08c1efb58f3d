import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from illume_core import CheckpointError, load_checkpoint, load_config, save_checkpoint
from illume_core import checkpoint as checkpoint_module

torch = pytest.importorskip("torch")


def test_round_trip_torch_and_tied_weights(tmp_path):
    shared = torch.randn(4, 3)
    tensors = {"embed.weight": shared, "head.weight": shared, "bias": torch.arange(3)}
    save_checkpoint(tmp_path, {"width": 3}, tensors)
    config, loaded = load_checkpoint(tmp_path)
    assert config == {"width": 3}
    assert torch.equal(loaded["embed.weight"], shared) and torch.equal(
        loaded["head.weight"], shared
    )
    assert loaded["bias"].dtype == torch.int64
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]


def test_round_trip_numpy(tmp_path):
    save_checkpoint(tmp_path, {"k": 1}, {"a": np.ones((2, 2), np.float32)})
    _, loaded = load_checkpoint(tmp_path, framework="numpy")
    np.testing.assert_array_equal(loaded["a"], np.ones((2, 2), np.float32))


def test_pickles_are_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    torch.save({"w": torch.ones(1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pickled weights \(pytorch_model.bin\).*refused"):
        load_checkpoint(tmp_path)


def test_clear_errors_for_missing_and_corrupt(tmp_path):
    with pytest.raises(CheckpointError, match="is not a directory"):
        load_config(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="has no config.json"):
        load_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_config(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="has no model.safetensors"):
        load_checkpoint(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00garbage!")
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_checkpoint(tmp_path)


def test_exception_mid_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, {"version": 1}, {"w": torch.ones(1000)})

    def half_write(tmp, tensors, metadata):
        tmp.write_bytes(b"\x00" * 100)
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of a save

    monkeypatch.setattr(checkpoint_module, "_save_safetensors", half_write)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, {"version": 2}, {"w": torch.zeros(1000)})
    config, tensors = load_checkpoint(tmp_path)
    assert config == {"version": 1} and torch.equal(tensors["w"], torch.ones(1000))
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]  # no litter


def test_process_killed_mid_write_keeps_previous_checkpoint(tmp_path):
    """A real crash: the saving process is SIGKILLed after writing half of the new weights."""
    script = textwrap.dedent(
        f"""
        import os, signal, torch
        from illume_core import checkpoint, save_checkpoint
        save_checkpoint({str(tmp_path)!r}, {{"version": 1}}, {{"w": torch.ones(100_000)}})
        real = checkpoint._save_safetensors
        def dying(tmp, tensors, metadata):
            real(tmp, tensors, metadata)
            data = tmp.read_bytes()
            tmp.write_bytes(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        checkpoint._save_safetensors = dying
        save_checkpoint({str(tmp_path)!r}, {{"version": 2}}, {{"w": torch.zeros(100_000)}})
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()
    leftovers = [name for name in os.listdir(tmp_path) if ".tmp-" in name]
    assert leftovers, "the kill should have left a half-written temporary file behind"
    config, tensors = load_checkpoint(tmp_path)
    assert config == {"version": 1}
    assert torch.equal(tensors["w"], torch.ones(100_000))
    assert json.loads((tmp_path / "config.json").read_text()) == {"version": 1}


def test_atomic_directory_swaps_whole_folders(tmp_path):
    from illume_core import atomic_directory

    target = tmp_path / "model"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("v1")
    assert (target / "a.txt").read_text() == "v1"
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("crash while writing")
    assert (target / "a.txt").read_text() == "v1"
    with atomic_directory(target) as tmp:
        (tmp / "b.txt").write_text("v2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary folders left
