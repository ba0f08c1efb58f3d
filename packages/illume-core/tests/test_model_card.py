import yaml

from illume_core import CARD_FILE, add_training, model_card, write_model_card


def test_a_card_has_metadata_a_loader_and_one_training_section_however_often_added(tmp_path):
    text = model_card(
        "A tokenizer", "What it is.", load="load(THIS_DIR)", tags=["vq"],
        pipeline_tag="image-feature-extraction", facts={"codebook": 64},
    )  # fmt: skip
    meta = yaml.safe_load(text.split("---")[1])
    assert meta == {
        "library_name": "illume",
        "pipeline_tag": "image-feature-extraction",
        "tags": ["illume", "vq"],
    }
    assert "| codebook | 64 |" in text and "load(THIS_DIR)" in text
    write_model_card(tmp_path, text)
    add_training(tmp_path, {"stage": "tokenizer", "steps": 10, "data": ["a.jsonl"],
                            "metrics": {"train/loss": 0.123456}})  # fmt: skip
    add_training(tmp_path, {"stage": "tokenizer", "recipe": "r.yaml", "steps": 20})
    card = (tmp_path / CARD_FILE).read_text()
    assert card.count("## How it was trained") == 1
    assert "recipe `r.yaml`, 20 optimizer steps" in card and "a.jsonl" not in card
    assert card.startswith(text.rstrip("\n"))
