"""The arms of benchmarks/paper_claims.py are the chains the claims say they are: a benchmark that
trained the wrong data would report a verdict about something else."""

import importlib.util
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def claims():
    path = Path(__file__).parents[1] / "benchmarks" / "paper_claims.py"
    spec = importlib.util.spec_from_file_location("paper_claims", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _files(chain, name):
    return [Path(f).name for f in chain.recipe(name)["data"]["train"]]


def test_table_2_arms_differ_only_in_their_data(claims):
    arms = {arm: claims.task_chain(arm, seed=2, fraction=0.5) for arm in claims.TASK_DATA}
    default = claims.CHAIN
    for arm, chain in arms.items():
        assert chain.stage_names == claims.MLLM_STAGES
        for name in claims.MLLM_STAGES:
            recipe = chain.recipe(name)
            kept = _files(chain, name)
            assert kept and set(kept) <= claims.TASK_DATA[arm]
            # what an arm keeps, it keeps at the default chain's weight and packing
            full = default.recipe(name)["data"]
            for f, w in zip(recipe["data"]["train"], recipe["data"]["weights"], strict=True):
                assert w == full["weights"][full["train"].index(f)]
            assert recipe["seed_everything"] == 2 and recipe["data"]["seed"] == 2
            assert recipe["model"]["seed"] == 2
            assert chain.steps(name) == round(default.steps(name) * 0.5)
        # stage 3's learning rates (a chain override) survive the arm's own overrides
        assert (
            chain.recipe("mllm_stage3")["model"]["groups"]
            == default.recipe("mllm_stage3")["model"]["groups"]
        )
    # the joint arm is the default chain's data; the two single-task arms split it
    for name in claims.MLLM_STAGES:
        assert _files(arms["joint"], name) == _files(default, name)
        assert sorted(_files(arms["understanding"], name) + _files(arms["generation"], name)) == (
            sorted(_files(default, name))
        )
    assert "t2i.json" not in _files(arms["understanding"], "mllm_stage2")
    assert _files(arms["generation"], "mllm_stage2") == ["t2i.json"]
    # every arm learns the same words
    corpora = {
        arm: chain.recipe("mllm_stage1")["model"]["tokenizer_corpus"] for arm, chain in arms.items()
    }
    assert len({tuple(c) for c in corpora.values()}) == 1


def test_fig_6_arms_differ_only_in_the_layer_their_tokenizer_reconstructs(claims):
    chains = {
        arm: claims.tokenizer_chain(arm, seed=1, fraction=0.5, points=4)
        for arm in ("semantic", "pixel")
    }
    chain_tokenizer = claims.CHAIN.recipe("tokenizer")["model"]
    for arm, chain in chains.items():
        assert chain.stage_names == ("tokenizer", "mllm_stage1", "mllm_stage2")
        tokenizer = chain.recipe("tokenizer")
        # both quantize what the chain's tokenizer quantizes (patch embeddings: a code a cell)
        assert tokenizer["model"]["feature_layer"] == chain_tokenizer["feature_layer"] == 0
        assert tokenizer["model"]["overrides"]["target_layer"] == claims.TOKENIZER_TARGETS[arm]
        assert {k: v for k, v in tokenizer["model"].items() if k != "overrides"} == {
            k: v for k, v in chain_tokenizer.items() if k != "overrides"
        }
        assert tokenizer["seed_everything"] == 1
        assert chain.steps("tokenizer") == claims.CHAIN.steps("tokenizer")
        steps = chain.steps("mllm_stage2")
        assert steps == round(claims.CHAIN.steps("mllm_stage2") * 0.5)
        assert chain.recipe("mllm_stage2")["model"]["snapshot_every"] == steps // 4
    # the semantic arm reconstructs what the default chain's own tokenizer reconstructs; the
    # pixel arm the patch embedding, a linear map of the pixels
    assert chain_tokenizer["overrides"]["target_layer"] == claims.TOKENIZER_TARGETS["semantic"]
    assert claims.TOKENIZER_TARGETS["pixel"] == 0
