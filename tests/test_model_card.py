"""The model card parses with the Hub's parser and the folder still loads with sentence-transformers."""

from retriever_forge.hashing import hash_tree
from retriever_forge.model_card import CARD_FILE, published_weights, render_model_card, write_model_card
from tests._tiny_encoder import tiny_encoder_folder

FACTS = {
    "base_model": "all-MiniLM-L6-v2",
    "dataset": "cacm",
    "loss": "infonce",
    "examples": {"rows": 120, "splits": {"dev": 12, "train": 108}, "mean_negatives": 3.0},
    "hyperparameters": {"learning_rate": 2e-5, "batch_size": 32, "epochs": 1},
    "training": {"steps": 4, "best_step": 3, "stop_reason": "completed", "device": "cpu", "precision": "bfloat16-autocast"},
    "hardware": {"machine": "x86_64", "cpus": 2},
    "dev_metrics": [{"step": 0, "mrr@10": 0.41}, {"step": 3, "mrr@10": 0.45}],
    "scoreboard": [{"system": "base", "ndcg_cut_10": 0.419},
                   {"system": "fine-tuned", "ndcg_cut_10": 0.464, "vs_base": {"delta": 0.045, "p_value": 0.004, "p_value_holm": 0.012}}],
    "lineage": {"artifacts": {"corpus": {"hash": "a" * 64, "rows": 3204}, "training_examples": {"hash": "b" * 64, "rows": 120}},
                "models": {"synthetic_queries.generator": {"id": "SmolLM2", "weights_hash": "c" * 64}},
                "prompts": {"synthetic_queries.question": {"id": "queries/inpars_question_v1", "hash": "d" * 64}}},
    "code_version": "0123456789abcdef",
    "git_commit": "feedbeef",
}  # fmt: skip


def test_card_parses_with_huggingface_hub_and_model_still_loads(tmp_path):
    from huggingface_hub import ModelCard
    from sentence_transformers import SentenceTransformer

    folder = tiny_encoder_folder(tmp_path / "enc")
    before = hash_tree(folder)
    write_model_card(folder, FACTS)
    assert hash_tree(folder) != before  # the card is part of the artifact's content hash
    card = ModelCard.load(f"{folder}/{CARD_FILE}")
    data = card.data.to_dict()
    assert data["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert data["library_name"] == "sentence-transformers" and data["pipeline_tag"] == "sentence-similarity"
    assert data["datasets"] == ["cacm"] and "retriever-forge" in data["tags"]
    for text in ("kept step: **3**", "bfloat16-autocast", "| `learning_rate` | 2e-05 |", "retriever-forge trace bbbbbbbbbbbbbbbb",
                 "+0.0450 (p=0.012)", "0.464", "a" * 64, "queries/inpars_question_v1"):  # fmt: skip
        assert text in card.text, text
    model = SentenceTransformer(folder, device="cpu")
    assert model.encode(["the file path"]).shape[0] == 1


def test_card_without_scoreboard_says_where_scores_are_and_is_deterministic():
    facts = {k: v for k, v in FACTS.items() if k != "scoreboard"}
    text = render_model_card(facts)
    assert "retriever-forge model-card benchmark_scores cacm" in text
    assert text == render_model_card(facts)


def test_local_base_model_is_named_in_text_not_front_matter(tmp_path):
    text = render_model_card({**FACTS, "base_model": str(tmp_path)})
    assert "base_model:" not in text.split("---")[1] and str(tmp_path) in text


def test_published_weights_names_the_kept_step():
    class Manifests:
        def __init__(self, training):
            self.training = training

        def read_manifest(self, ref):
            return {"extra": {"training": self.training}}

    assert published_weights(Manifests({"best_step": 0, "steps": 4}), None) == "base"
    assert published_weights(Manifests({"best_step": 3, "steps": 4, "kept_base_weights": True}), None) == "base"
    assert published_weights(Manifests({"best_step": 3, "steps": 4}), None) == "fine-tuned (step 3 of 4)"
    assert published_weights(Manifests({"best_step": None, "steps": 4}), None) == "fine-tuned (last step, 4; no dev evaluation)"
