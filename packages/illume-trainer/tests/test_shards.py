"""Packed shards streamed by ranks x workers: disjoint and complete, exact resume, re-dealing on a
layout change, stale codes refused, a broken shard skipped and counted (illume_trainer.shards)."""

import json
import os
import socket
from pathlib import Path

import pytest
import torch
from PIL import Image

from illume_trainer.conversations import BadSample, ConversationSample, collate_conversations
from illume_trainer.data import ManifestError
from illume_trainer.guards import BadSampleGuard, TooManyBadSamples
from illume_trainer.packing import pack_conversations
from illume_trainer.shards import (
    MANIFEST,
    PARTIAL,
    ShardLoader,
    ShardSource,
    ShardStream,
    StaleCodesError,
    tokenizer_fingerprint,
)


def _llava(root: Path, n: int, name: str = "data.json", broken: int = -1) -> Path:
    """n conversations about tiny images: even ones draw (an output image), odd ones ask (an
    input image). `broken`: that entry's image is not an image."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(n):
        path = root / "images" / f"{name}-{i}.png"
        if i == broken:
            path.write_bytes(b"not a png")
        else:
            Image.new("RGB", (8, 8), (i % 256, (i * 7) % 256, 3)).save(path)
        turns = (
            [{"from": "human", "value": f"draw {i}"}, {"from": "gpt", "value": "<image>"}]
            if i % 2 == 0
            else [
                {"from": "human", "value": f"<image>\nwhat is {i}?"},
                {"from": "gpt", "value": f"{i}"},
            ]
        )
        entries.append(
            {"id": f"{name}-{i}", "image": f"images/{path.name}", "conversations": turns}
        )
    file = root / name
    file.write_text(json.dumps(entries))
    return file


def _ids(samples) -> list[str]:
    return [s.id if not isinstance(s, BadSample) else f"bad:{s.index}" for s in samples]


def _take(stream: ShardStream, n: int) -> list:
    it = iter(stream)
    return [next(it) for _ in range(n)]


class _Reader(ShardStream):
    """A stream pinned to one (worker, workers) slot, to walk many layouts without processes."""

    def __init__(self, *args, worker: int = 0, workers: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self._worker, self._workers = worker, workers

    def slot(self):
        return self.rank * self._workers + self._worker, self.world * self._workers


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    source = _llava(root, 50, broken=13)
    manifest = pack_conversations(source, root / "tar", shard_size=7, progress=False)
    return root, source, manifest


def test_pack_writes_shards_and_a_manifest_and_skips_bad_images(packed):
    root, _, manifest = packed
    assert manifest["samples"] == 49 and manifest["skipped"] == 1
    assert "data.json-13" in manifest["skipped_examples"][0]
    assert len(manifest["shards"]) == 8 and sum(s["samples"] for s in manifest["shards"]) == 49
    assert not (root / "tar" / PARTIAL).exists()
    import hashlib

    for shard in manifest["shards"]:
        data = (root / "tar" / shard["name"]).read_bytes()
        assert len(data) == shard["bytes"] and hashlib.sha256(data).hexdigest() == shard["sha256"]
    # a sample as the stage sees it: turns, the input image loaded, no paths
    samples = {s.id: s for s in _take(ShardStream([root / "tar"]), 49)}
    ask, draw = samples["data.json-3"], samples["data.json-4"]
    assert ask.turns[0] == ("user", "<image>\nwhat is 3?") and ask.inputs[0].size == (8, 8)
    assert draw.output_images[0].getpixel((0, 0)) == (4, 28, 3) and not draw.codes
    with pytest.raises(FileExistsError, match="packed already"):
        pack_conversations(root / "data.json", root / "tar", progress=False)


def test_pack_resumes_at_the_first_unwritten_shard(tmp_path, monkeypatch):
    source = _llava(tmp_path, 20)
    from illume_trainer import packing

    real, calls = packing._tar_bytes, []

    def failing(samples):
        calls.append(len(samples))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(samples)

    monkeypatch.setattr(packing, "_tar_bytes", failing)
    with pytest.raises(KeyboardInterrupt):
        pack_conversations(source, tmp_path / "out", shard_size=6, progress=False)
    assert (tmp_path / "out" / PARTIAL).is_file() and not (tmp_path / "out" / MANIFEST).exists()
    with pytest.raises(ManifestError, match="did not finish"):
        ShardSource.open(tmp_path / "out")
    first = (tmp_path / "out" / "shard-000000.tar").read_bytes()
    monkeypatch.setattr(packing, "_tar_bytes", real)
    manifest = pack_conversations(source, tmp_path / "out", shard_size=6, progress=False)
    assert manifest["samples"] == 20 and len(manifest["shards"]) == 4
    assert (tmp_path / "out" / "shard-000000.tar").read_bytes() == first  # not written again
    fresh = pack_conversations(source, tmp_path / "again", shard_size=6, progress=False)
    assert fresh["shards"] == manifest["shards"]  # byte for byte what an uninterrupted run wrote


@pytest.mark.parametrize("world,workers", [(1, 1), (1, 3), (2, 1), (2, 2), (3, 2)])
def test_readers_read_disjoint_shards_that_cover_each_epoch(packed, world, workers):
    root, _, manifest = packed
    everything = set()
    for epoch in range(2):
        seen = []
        for rank in range(world):
            for worker in range(workers):
                reader = _Reader(
                    [root / "tar"], seed=3, rank=rank, world=world, worker=worker, workers=workers
                )
                slot, slots = reader.slot()
                sizes = [
                    sum(s.stop - s.start for s in reader.segments(0, e, slot, slots))
                    for e in range(epoch + 1)
                ]
                samples = _take(reader, sum(sizes))[sum(sizes[:-1]) :]  # this epoch's
                seen += _ids(samples)
        assert len(seen) == len(set(seen)) == manifest["samples"]  # none twice, none dropped
        everything |= set(seen)
    assert len(everything) == 49


def test_a_source_with_fewer_shards_than_readers_is_refused(packed):
    root, _, _ = packed
    with pytest.raises(ManifestError, match="8 shard.*for 9 readers.*--shard-size"):
        ShardStream([root / "tar"], rank=0, world=3).check_readers(3)


def test_sources_mix_by_weight_times_size(tmp_path, packed):
    root, _, _ = packed
    small = pack_conversations(
        _llava(tmp_path, 12, "small.json"), tmp_path / "small", shard_size=3, progress=False
    )
    assert small["samples"] == 12
    stream = ShardStream([root / "tar", tmp_path / "small"], weights=[1.0, 2.0], seed=0)
    ids = _ids(_take(stream, 4000))
    share = sum(i.startswith("small") for i in ids) / len(ids)
    assert abs(share - 24 / (49 + 24)) < 0.03, share


@pytest.mark.parametrize("workers", [0, 2])
def test_a_loader_resumes_mid_shard_exactly(tmp_path, packed, workers):
    root, _, _ = packed
    small = tmp_path / "small"
    pack_conversations(_llava(tmp_path, 12, "small.json"), small, shard_size=3, progress=False)

    def loader():
        stream = ShardStream([root / "tar", small], weights=[1.0, 0.5], seed=1)
        return ShardLoader(
            stream, batch_size=5, num_workers=workers, collate_fn=collate_conversations
        )

    first = loader()
    it = iter(first)
    before = [_ids(next(it)["items"]) for _ in range(7)]  # 35 samples: inside a shard
    state = first.state_dict()
    reference = [_ids(next(it)["items"]) for _ in range(6)]
    resumed = loader()
    resumed.load_state_dict(state)
    it = iter(resumed)
    assert [_ids(next(it)["items"]) for _ in range(6)] == reference
    assert reference != before[:6]


def test_another_worker_count_re_deals_the_rest_of_the_epoch(packed):
    root, _, manifest = packed

    def loader(workers):
        return ShardLoader(
            ShardStream([root / "tar"], seed=2),
            batch_size=4,
            num_workers=workers,
            collate_fn=collate_conversations,
        )

    first = loader(2)
    it = iter(first)
    consumed = [i for _ in range(5) for i in _ids(next(it)["items"])]  # 20 of 49
    state = first.state_dict()
    resumed = loader(3)
    with pytest.warns(UserWarning, match="read once and none twice, but in another order"):
        resumed.load_state_dict(state)
    base = resumed.dataset.base
    rest = []
    for worker in range(3):  # what each new reader has left of epoch 0, in its own order
        reader = _Reader([root / "tar"], seed=2, worker=worker, workers=3)
        reader.base = base
        slot, slots = reader.slot()
        left = sum(s.stop - s.start for s in reader.segments(0, base["start"][0], slot, slots))
        rest += _ids(_take(reader, left))
    assert len(consumed) + len(rest) == manifest["samples"]
    assert set(consumed) | set(rest) == {f"data.json-{i}" for i in range(50) if i != 13}
    # and the re-dealt loader goes on, and resumes exactly in its own layout
    it = iter(resumed)
    next(it)
    again = resumed.state_dict()
    reference = [_ids(next(it)["items"]) for _ in range(3)]
    third = loader(3)
    third.load_state_dict(again)
    it = iter(third)
    assert [_ids(next(it)["items"]) for _ in range(3)] == reference


def _tiny_tokenizer(root: Path) -> Path:
    """A tiny tokenizer over a tiny SigLIP, saved and loaded by path as real ones are."""
    from illume_tokenizer import (
        SemanticTokenizer,
        TokenizerConfig,
        VisionEncoder,
        build_siglip,
        siglip_image_processor,
    )

    torch.manual_seed(0)
    build_siglip("tiny", vocab_size=40).save_pretrained(root / "enc")
    siglip_image_processor(32).save_pretrained(root / "enc")
    tokenizer = SemanticTokenizer(
        TokenizerConfig.from_name("tiny"), VisionEncoder.from_pretrained(root / "enc")
    )
    tokenizer.save_pretrained(root / "tok")
    return root / "tok"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, root: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:

        def loader():  # rank and world from the process group, as under DDP
            return ShardLoader(
                ShardStream([Path(root) / "tar"], seed=5),
                batch_size=3,
                num_workers=1,
                collate_fn=collate_conversations,
            )

        first = loader()
        it = iter(first)
        batches = [_ids(next(it)["items"]) for _ in range(4)]
        state = first.state_dict()
        batches += [_ids(next(it)["items"]) for _ in range(4)]
        # Lightning writes the checkpoint from rank 0: every rank resumes from rank 0's state
        shared = [state]
        torch.distributed.broadcast_object_list(shared, src=0)
        resumed = loader()
        resumed.load_state_dict(shared[0])
        it = iter(resumed)
        after = [_ids(next(it)["items"]) for _ in range(4)]
        Path(out, f"rank{rank}.json").write_text(json.dumps({"batches": batches, "after": after}))
    finally:
        torch.distributed.destroy_process_group()


def test_two_ddp_processes_on_gloo_read_disjoint_shards_and_resume_exactly(tmp_path, packed):
    root, _, _ = packed
    torch.multiprocessing.spawn(
        _ddp_worker, args=(2, _free_port(), str(root), str(tmp_path)), nprocs=2, join=True
    )
    runs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for run in runs:
        assert run["after"] == run["batches"][4:]  # the batches the uninterrupted run drew
    first = [set(i for b in run["batches"][:4] for i in b) for run in runs]
    assert not first[0] & first[1]  # the two ranks read different shards


def test_codes_are_packed_and_another_tokenizers_are_refused(tmp_path):
    from illume_tokenizer import SemanticTokenizer

    first = _tiny_tokenizer(tmp_path / "a")
    source = _llava(tmp_path, 6)
    manifest = pack_conversations(
        source, tmp_path / "codes", tokenizer=first, shard_size=2, kind="parquet", progress=False
    )
    assert manifest["tokenizer"]["fingerprint"] == tokenizer_fingerprint(first)
    tokenizer = SemanticTokenizer.from_pretrained(first)
    samples = {s.id: s for s in _take(ShardStream([tmp_path / "codes"]), 6)}
    image = Image.open(tmp_path / "images" / "data.json-2.png").convert("RGB")
    expected = tokenizer.encode(tokenizer.preprocess([image])).codes[0]
    assert torch.equal(torch.as_tensor(samples["data.json-2"].codes[0]), expected)  # its codes
    assert samples["data.json-2"].output_images == {}  # the stage never encodes it again
    assert 0 in samples["data.json-3"].codes and 0 in samples["data.json-3"].inputs
    # another tokenizer (other weights): its fingerprint differs, and a stage refuses the codes
    other = tmp_path / "b" / "tok"
    SemanticTokenizer.from_pretrained(first).save_pretrained(other)
    assert tokenizer_fingerprint(other) == tokenizer_fingerprint(first)
    from safetensors.torch import load_file, save_file

    weights = load_file(other / "model.safetensors")
    key = next(iter(weights))
    weights[key] = weights[key] + 1
    save_file(weights, other / "model.safetensors")
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(first)
    from illume_trainer.conversations import ConversationDataModule
    from illume_trainer.stages.mllm import MLLMStage

    data = ConversationDataModule([str(tmp_path / "codes")], batch_size=2)
    stage = MLLMStage(str(tmp_path / "out"), str(other), {"llm": 1e-4}, llm="tiny")
    stage._trainer = type("T", (), {"datamodule": data})()  # only what setup reads
    with pytest.raises(StaleCodesError, match="another tokenizer.*illume data pack --tokenizer"):
        stage.setup("fit")


def test_a_broken_shard_is_skipped_and_counted_and_the_rest_is_read(tmp_path, packed):
    root, _, manifest = packed
    import shutil

    shutil.copytree(root / "tar", tmp_path / "tar")
    victim = manifest["shards"][2]
    path = tmp_path / "tar" / victim["name"]
    path.write_bytes(path.read_bytes()[:700])  # truncated mid-member
    stream = ShardStream([tmp_path / "tar"], seed=0)
    samples = _take(stream, 49)
    bad = [s for s in samples if isinstance(s, BadSample)]
    assert len(bad) == victim["samples"] and all(s.whole_shard for s in bad)
    assert victim["name"] in bad[0].error
    good = [s.id for s in samples if isinstance(s, ConversationSample)]
    assert len(good) == len(set(good)) == 49 - victim["samples"]
    # the bad-sample ceiling counts each lost sample, but a lost shard is not a run of bad reads
    guard = BadSampleGuard(max_fraction=0.5, max_in_a_row=3, min_seen=10)
    batch = collate_conversations(samples[:20])
    guard.on_train_batch_start(None, None, batch, 0)
    assert (
        guard.skipped == sum(isinstance(s, BadSample) for s in samples[:20]) and guard.in_a_row == 0
    )
    with pytest.raises(TooManyBadSamples):
        strict = BadSampleGuard(max_fraction=0.01, max_in_a_row=3, min_seen=10)
        strict.on_train_batch_start(None, None, collate_conversations(samples), 0)


def test_parquet_files_without_a_manifest_stream_by_row_group(tmp_path):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for i in range(10):
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), (i, 0, 0)).save(buffer, format="PNG")
        rows.append(
            {
                "id": f"hub-{i}",
                "image": {"bytes": buffer.getvalue()},
                "conversations": [
                    {"from": "human", "value": f"<image>\nq{i}"},
                    {"from": "gpt", "value": f"a{i}"},
                ],
            }
        )
    (tmp_path / "hub").mkdir()
    pq.write_table(
        pa.Table.from_pylist(rows), tmp_path / "hub" / "train-0.parquet", row_group_size=4
    )
    source = ShardSource.open(tmp_path / "hub")
    assert [s.samples for s in source.shards] == [4, 4, 2]
    samples = _take(ShardStream([tmp_path / "hub"]), 10)
    assert sorted(s.id for s in samples) == sorted(f"hub-{i}" for i in range(10))
    assert samples[0].inputs[0].size == (8, 8) and samples[0].turns[1][0] == "assistant"


def test_an_mllm_stage_trains_from_shards_packed_with_codes(tmp_path):
    """ShapesWorld's stage-1 recipe, its two conversation files packed with the tokenizer's codes
    and listed in place of the files."""
    from illume_eval.shapes import write_dataset
    from illume_mllm import IllumeForConditionalGeneration
    from illume_trainer.cli import run_stage

    data = tmp_path / "shapes"
    write_dataset(data, 48, seed=0, n_eval=16, progress=False)
    tokenizer = _tiny_tokenizer(tmp_path)
    shards = []
    for name in ("i2t", "t2i"):
        pack_conversations(
            data / "train" / f"{name}.json",
            tmp_path / name,
            tokenizer=tokenizer,
            shard_size=8,
            progress=False,
        )
        shards.append(str(tmp_path / name))
    out = tmp_path / "stage1"
    cli = run_stage(
        "mllm",
        [
            "--config",
            "recipes/shapes/mllm_stage1.yaml",
            "--trainer.max_steps",
            "3",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.logger",
            "false",
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.val_check_interval",
            "3",
            "--data.batch_size",
            "4",
            "--data.train",
            json.dumps(shards),
            "--data.val",
            json.dumps([str(data / "validation" / "i2t.json")]),
            "--model.tokenizer",
            str(tokenizer),
            "--model.tokenizer_corpus",
            json.dumps([str(data / "train" / "qa.json")]),
            "--model.llm",
            "tiny",
            "--model.vision_feature_layer",
            "[0, -2]",
            "--model.output_dir",
            str(out),
        ],
    )
    assert cli.trainer.global_step == 3 and torch.isfinite(
        cli.trainer.callback_metrics["train/loss"]
    )
    assert IllumeForConditionalGeneration.from_pretrained(out).config.codebook_size == 64
