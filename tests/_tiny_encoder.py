"""A tiny random sentence-transformers encoder (2-layer, 32-wide BERT) for fast tests.

Its vocabulary is common English words plus the synthetic benchmark's stdlib words, so the
texts tests use tokenise to real ids; it encodes hundreds of texts a second on one CPU thread.
"""

from __future__ import annotations

from pathlib import Path

WORDS = [
    "the",
    "a",
    "an",
    "of",
    "to",
    "in",
    "and",
    "or",
    "is",
    "are",
    "for",
    "with",
    "on",
    "by",
    "from",
    "as",
    "at",
    "that",
    "this",
    "it",
    "be",
    "not",
    "can",
    "which",
    "return",
    "returns",
    "object",
    "file",
    "path",
    "list",
    "string",
    "value",
    "values",
    "number",
    "numbers",
    "data",
    "table",
    "index",
    "search",
    "query",
    "queries",
    "passage",
    "passages",
    "sort",
    "sorting",
    "hash",
    "tree",
    "graph",
    "path",
    "shortest",
    "algorithm",
    "database",
    "network",
    "parser",
    "compiler",
    "matrix",
    "vector",
    "train",
    "training",
    "model",
]


def tiny_encoder_folder(root: Path, extra_words: list[str] | None = None) -> str:
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = sorted(set(WORDS) | set(extra_words or []))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, ".", ":", ","]
    hf = Path(root) / "hf"
    hf.mkdir(parents=True, exist_ok=True)
    (hf / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab=str(hf / "vocab.txt")).save_pretrained(str(hf))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=128)  # fmt: skip
    BertModel(config).save_pretrained(str(hf), safe_serialization=True)
    st = SentenceTransformer(
        modules=[models.Transformer(str(hf), max_seq_length=64), models.Pooling(32, "mean"), models.Normalize()], device="cpu"
    )
    out = Path(root) / "tiny-st"
    st.save(str(out))
    return str(out)
