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
    assert sorted(p.name for p in target.iterdir()) == [".illume-output.json", "b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary folders left


def test_atomic_directory_never_replaces_a_folder_it_did_not_write(tmp_path):
    """A user's folder (no marker), a file, or an illume folder of another kind (a model where an
    export goes) is refused before the block runs, and nothing in it is touched."""
    from illume_core import DirectoryNotOursError, atomic_directory, check_replaceable

    thesis = tmp_path / "home"
    (thesis / "sub").mkdir(parents=True)
    (thesis / "thesis.txt").write_text("years of work")
    (thesis / "sub" / "data.csv").write_text("1,2,3")
    ran = []
    with (
        pytest.raises(DirectoryNotOursError, match="not written by illume"),
        atomic_directory(thesis, "onnx-export"),
    ):
        ran.append(True)
    assert not ran
    assert (thesis / "thesis.txt").read_text() == "years of work"
    assert (thesis / "sub" / "data.csv").read_text() == "1,2,3"
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep")
    with pytest.raises(DirectoryNotOursError, match="not a folder"):
        check_replaceable(a_file, "pipeline")
    model = tmp_path / "model"
    with atomic_directory(model, "pipeline") as tmp:
        (tmp / "config.json").write_text("{}")
    with pytest.raises(DirectoryNotOursError, match="illume pipeline folder"):
        check_replaceable(model, "onnx-export")
    check_replaceable(model, "pipeline")  # its own kind: replaceable
    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_directory(empty, "onnx-export") as tmp:
        (tmp / "manifest.json").write_text("{}")
    assert (empty / "manifest.json").is_file()


def test_stale_temporaries_of_a_killed_save_are_swept_by_the_next(tmp_path):
    """A save killed mid-way leaves a dot-folder (and a dot-file) beside its target; the next save
    of the same target removes them, and leaves other names alone."""
    import subprocess
    import sys

    target = tmp_path / "model"
    child = (
        "import os, signal, sys\n"
        "from illume_core import atomic_directory, atomic_write\n"
        "def die(tmp):\n"
        "    tmp.write_text('half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "with atomic_directory(sys.argv[1], 'pipeline') as tmp:\n"
        "    (tmp / 'w.bin').write_bytes(b'x' * 1000)\n"
        "    (tmp / 'part').mkdir()\n"
        "    atomic_write(tmp / 'part' / 'model.safetensors', die)\n"
    )
    assert subprocess.run([sys.executable, "-c", child, str(target)]).returncode == -9
    left = sorted(p.name for p in tmp_path.iterdir())
    assert any(n.startswith(".model.tmp-") for n in left)
    (tmp_path / ".model-notes").write_text("not ours")  # a name we never make
    from illume_core import atomic_directory, save_checkpoint

    with atomic_directory(target, "pipeline") as tmp:
        (tmp / "w.bin").write_bytes(b"y")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model-notes", "model"]
    # a checkpoint folder's own leftovers are swept by its next save
    part = tmp_path / "ckpt"
    part.mkdir()
    (part / ".model.safetensors.tmp-999999999-deadbeef").write_bytes(b"half")
    save_checkpoint(part, {"v": 1}, {})
    assert sorted(p.name for p in part.iterdir()) == ["config.json", "model.safetensors"]


_KILL_AT = """
import os, signal, sys
import numpy as np
from illume_core import atomic_directory, save_checkpoint

WRITES = {"open", "os.rename", "os.replace", "os.mkdir", "os.remove", "os.unlink", "shutil.rmtree"}
kill_at, count = int(sys.argv[2]), 0

def hook(event, args):
    global count
    if event not in WRITES or (event == "open" and not _writes(args)):
        return
    count += 1
    if count == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)

def _writes(args):
    mode, flags = (args[1] if len(args) > 1 else "r"), (args[2] if len(args) > 2 else 0)
    return (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
        isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))

sys.addaudithook(hook)
version = float(sys.argv[3])
with atomic_directory(sys.argv[1], "pipeline") as tmp:
    for part in ("tokenizer", "mllm", "detokenizer"):
        save_checkpoint(tmp / part, {"version": version}, {"w": np.full(1000, version, np.float32)})
print("writes", count)
"""


def test_a_kill_at_any_write_of_a_save_leaves_the_previous_state_loadable(tmp_path):
    """A save killed at each of its writes in turn (every open for writing, mkdir, rename and
    removal): the folder then loads whole, as the previous version or the new one, never a mix;
    the next save succeeds and leaves no temporary behind."""
    import subprocess
    import sys

    from illume_core import load_checkpoint

    target = tmp_path / "pipe"
    script = tmp_path / "save.py"
    script.write_text(_KILL_AT)

    def save(version: float, kill_at: int = 0) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(script), str(target), str(kill_at), str(version)],
            capture_output=True,
            text=True,
        )

    def versions() -> set[float]:
        found = set()
        for part in ("tokenizer", "mllm", "detokenizer"):
            config, tensors = load_checkpoint(target / part, framework="numpy")
            assert (tensors["w"] == config["version"]).all()  # weights match their config
            found.add(config["version"])
        return found

    first = save(1.0)
    assert first.returncode == 0, first.stderr
    total = int(first.stdout.split()[-1])
    assert total >= 10
    for kill_at in range(1, total + 1):
        crashed = save(2.0, kill_at)
        assert crashed.returncode == -9, (kill_at, crashed.stderr)
        assert versions() in ({1.0}, {2.0}), kill_at  # one version, whole
        again = save(1.0)  # the next save succeeds, and sweeps what the killed one left
        assert again.returncode == 0, again.stderr
        assert versions() == {1.0}
        assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe", "save.py"], kill_at
