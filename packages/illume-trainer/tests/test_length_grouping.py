"""LengthGroupedSampler: batches of similar length, the same global batches under DDP, exact resume."""

import numpy as np
import pytest
from torchdata.stateful_dataloader import StatefulDataLoader

from illume_trainer.data import LengthGroupedSampler, make_loader

N, BATCH = 203, 8


@pytest.fixture(scope="module")
def lengths():
    # a mixture like stage 3's: short (text-to-image), medium (edits), long (multi-turn QA)
    return np.random.default_rng(0).choice([95, 170, 290], size=N).tolist()


def _batches(loader):
    return [batch.tolist() for batch in loader]


def _padding(batches, lengths):
    """Padded positions over all batches: what a batch costs beyond its content."""
    return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)


def test_batches_are_grouped_by_length_and_cover_the_epoch(lengths):
    data = list(range(N))
    grouped = _batches(make_loader(data, None, BATCH, True, 0, seed=3, lengths=lengths))
    plain = _batches(make_loader(data, None, BATCH, True, 0, seed=3))
    flat = [i for b in grouped for i in b]
    assert len(flat) == len(set(flat)) == N // BATCH * BATCH  # drop_last, nothing twice
    assert all(len(b) == BATCH for b in grouped)
    assert _padding(grouped, lengths) < 0.25 * _padding(plain, lengths)
    # a function of (seed, epoch): the same again, another epoch another order
    assert _batches(make_loader(data, None, BATCH, True, 0, seed=3, lengths=lengths)) == grouped
    sampler = LengthGroupedSampler(data, lengths, BATCH, seed=3)
    sampler.set_epoch(1)
    assert sampler.order() != flat


def test_two_processes_get_halves_of_the_same_global_batches(lengths):
    data = list(range(N))
    one = LengthGroupedSampler(data, lengths, 2 * BATCH, seed=5).order()
    ranks = [
        LengthGroupedSampler(data, lengths, BATCH, num_replicas=2, rank=r, seed=5).order()
        for r in (0, 1)
    ]
    global_batches = [one[i : i + 2 * BATCH] for i in range(0, len(one), 2 * BATCH)]
    for k, expected in enumerate(global_batches[: len(ranks[0]) // BATCH]):
        local = [ranks[r][k * BATCH : (k + 1) * BATCH] for r in (0, 1)]
        assert sorted(local[0] + local[1]) == sorted(expected)


def test_a_resumed_loader_continues_with_the_same_batches(lengths):
    data = list(range(N))
    full = _batches(make_loader(data, None, BATCH, True, 0, seed=7, lengths=lengths))
    loader = make_loader(data, None, BATCH, True, 0, seed=7, lengths=lengths)
    it = iter(loader)
    head = [next(it).tolist() for _ in range(5)]
    state = loader.state_dict()
    resumed = make_loader(data, None, BATCH, True, 0, seed=7, lengths=lengths)
    resumed.load_state_dict(state)
    assert isinstance(resumed, StatefulDataLoader)
    assert head + _batches(resumed) == full


def test_lengths_must_match_the_dataset():
    with pytest.raises(ValueError, match="3 lengths for a dataset of 4"):
        LengthGroupedSampler([0, 1, 2, 3], [1, 2, 3], 2)


def test_a_training_set_smaller_than_one_batch_is_refused():
    # drop_last would give no batch: a stage that trains no step and saves nothing, silently
    with pytest.raises(ValueError, match="fewer than one global batch"):
        make_loader(list(range(BATCH - 1)), None, BATCH, True, 0, seed=0)
    # validation keeps its last, partial batch
    assert len(make_loader(list(range(BATCH - 1)), None, BATCH, False, 0, seed=0)) == 1
