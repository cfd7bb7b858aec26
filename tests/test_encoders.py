"""Pooling heads, decoder masks, query prompts and the encoding helpers on tiny random models."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoTokenizer

from retriever_forge import decoder, pooling
from retriever_forge.encoding import Encoder, encode, encode_queries, open_sentence_transformer
from retriever_forge.training import TrainingConfig, configure_encoder, train_encoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXTS = ["sort the list of numbers", "hash table index search", "shortest path in a graph", "parser and compiler tree"]


def _st(path: str):
    return open_sentence_transformer(path, device="cpu")


def _vectors(model, texts=TEXTS) -> np.ndarray:
    return model.encode(texts, convert_to_numpy=True, normalize_embeddings=False, show_progress_bar=False)


def _contrastive_loss(model, texts=TEXTS) -> torch.Tensor:
    features = model.preprocess(texts)
    emb = torch.nn.functional.normalize(model(features)["sentence_embedding"], dim=-1)
    sim = emb @ emb.roll(1, 0).T / 0.05
    return torch.nn.functional.cross_entropy(sim, torch.arange(len(texts)))


def _train_steps(model, steps: int = 3) -> None:
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(steps):
        opt.zero_grad()
        _contrastive_loss(model).backward()
        opt.step()
    model.eval()


def _examples(n: int = 24) -> pl.DataFrame:
    topics = [
        ("sort", "sorting numbers list"),
        ("hash", "hash table index"),
        ("graph", "shortest path graph"),
        ("parser", "parser compiler tree"),
    ]
    rows = []
    for i in range(n):
        t, text = topics[i % 4]
        o, other = topics[(i + 1) % 4]
        rows.append({"query_id": f"q{i}", "query": f"{t} {text.split()[i % 3]}", "positive_id": f"d{i % 4}", "positive_text": text,
                     "positive_grade": 3.0, "negative_ids": [f"d{(i + 1) % 4}"], "negative_texts": [other], "negative_grades": [0.0],
                     "split": "dev" if i >= n - 4 else "train"})  # fmt: skip
    return pl.DataFrame(rows)


# ------------------------------------------------------------------------------------ pooling


H = torch.tensor([[[1.0, -2.0, 3.0, 4.0], [3.0, 4.0, -1.0, 0.0], [9.0, 9.0, 9.0, 9.0]]])  # the third token is padding


def _pool(module, h=H, mask=(1, 1, 0)) -> torch.Tensor:
    return module({"token_embeddings": h, "attention_mask": torch.tensor([mask])})["sentence_embedding"].detach()


def test_st_poolings_known_values_with_left_and_right_padding():
    assert torch.allclose(_pool(pooling.pooling_module("mean", 4)), torch.tensor([[2.0, 1.0, 1.0, 2.0]]))
    assert torch.allclose(_pool(pooling.pooling_module("cls", 4)), torch.tensor([[1.0, -2.0, 3.0, 4.0]]))
    last = pooling.pooling_module("last", 4)
    assert torch.allclose(_pool(last), torch.tensor([[3.0, 4.0, -1.0, 0.0]]))  # right padding: second token
    left = torch.stack([H[0, [2, 0, 1]]])  # the padding first, as a left-padding tokenizer gives
    assert torch.allclose(_pool(last, left, (0, 1, 1)), torch.tensor([[3.0, 4.0, -1.0, 0.0]]))


def test_gem_and_ggem_known_values():
    gem = pooling.GeMPooling(4, p_init=1.0)
    assert torch.allclose(_pool(gem), torch.tensor([[2.0, 1.0, 1.0, 2.0]]), atol=1e-5)  # p = 1: the mean
    gem2 = pooling.GeMPooling(4, p_init=2.0)
    # sign-preserving: channel 0: ((1 + 9) / 2)^(1/2); channel 1: (-4 + 16) / 2 = 6 -> sqrt 6; channel 2: (9 - 1) / 2 = 4 -> 2
    expected = torch.tensor([[5**0.5, 6**0.5, 2.0, (16 / 2) ** 0.5]])
    assert torch.allclose(_pool(gem2), expected, atol=1e-4)
    ggem = pooling.GeMPooling(4, groups=2, p_init=1.0)
    with torch.no_grad():
        ggem.p.copy_(torch.tensor([1.0, 2.0]))  # first two channels mean, last two p = 2
    assert torch.allclose(_pool(ggem), torch.tensor([[2.0, 1.0, 2.0, 8**0.5]]), atol=1e-4)
    assert _pool(ggem).shape == (1, 4) and ggem.p.requires_grad
    with pytest.raises(ValueError, match="must divide"):
        pooling.GeMPooling(4, groups=3)


def test_latent_attention_starts_as_mean_and_known_value():
    torch.manual_seed(0)
    la = pooling.LatentAttentionPooling(4, num_latents=3, num_heads=2)
    assert torch.allclose(_pool(la), torch.tensor([[2.0, 1.0, 1.0, 2.0]]), atol=1e-6)  # zero-initialised residual branches
    one = pooling.LatentAttentionPooling(4, num_latents=1, num_heads=2)
    with torch.no_grad():
        # One latent: every token's attention weight on it is 1, so each token gets to_out(v).
        one.to_out.weight.copy_(torch.eye(4))
        one.to_kv.weight.zero_()
        one.to_kv.weight[4:].copy_(torch.eye(4))  # v = normalised latent
        one.norm_latents.weight.fill_(1.0)
        one.norm_latents.bias.copy_(torch.tensor([0.5, 0.5, 0.5, 0.5]))
        one.latents.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    v = torch.nn.functional.layer_norm(one.latents, (4,)) + 0.5
    assert torch.allclose(_pool(one), torch.tensor([[2.0, 1.0, 1.0, 2.0]]) + v.detach(), atol=1e-5)


@pytest.mark.parametrize("mode", ["gem", "ggem", "latent_attention"])
def test_published_pooling_folder_reloads_to_identical_vectors(tiny, tmp_path, mode):
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    model = _st(tiny)
    configure_encoder(model, TrainingConfig(pooling=mode, latent_attention_latents=4, latent_attention_heads=2))
    _train_steps(model, 2)  # trained heads, not their initial values
    before = _vectors(model)
    model.save(str(tmp_path / "m"))
    assert not list((tmp_path / "m").rglob("*.bin")) and not list((tmp_path / "m").rglob("*.pt"))
    reloaded = SentenceTransformer(str(tmp_path / "m"), device="cpu", trust_remote_code=True)
    np.testing.assert_array_equal(_vectors(reloaded), before)
    np.testing.assert_array_equal(_vectors(_st(str(tmp_path / "m"))), before)  # the pipeline's own loader
    with pytest.raises(ValueError, match="trust_remote_code"):
        SentenceTransformer(str(tmp_path / "m"), device="cpu")


# ------------------------------------------------------------------------------------ decoders


def _token_states(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state


@pytest.mark.parametrize("padded", [False, True])
def test_bidirectional_mask_lets_an_early_token_see_a_later_one(tiny_decoder, padded):
    from transformers import AutoModel

    hf = AutoModel.from_pretrained(tiny_decoder).eval()
    a = torch.tensor([[5, 6, 7, 8]])
    b = torch.tensor([[5, 6, 7, 9]])  # only the last token differs
    mask = torch.ones_like(a)
    if padded:  # a padded batch builds an explicit mask; an unpadded one relies on the kernels' flag
        a, b = torch.cat([a, torch.tensor([[5, 6, 0, 0]])]), torch.cat([b, torch.tensor([[5, 6, 0, 0]])])
        mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    causal_a, causal_b = _token_states(hf, a, mask), _token_states(hf, b, mask)
    assert torch.allclose(causal_a[0, 0], causal_b[0, 0], atol=1e-6)  # causal: token 0 cannot see token 3
    assert decoder.set_bidirectional(hf, True) == 2
    bi_a, bi_b = _token_states(hf, a, mask), _token_states(hf, b, mask)
    assert not torch.allclose(bi_a[0, 0], bi_b[0, 0], atol=1e-4)  # bidirectional: it can
    assert not torch.allclose(bi_a[0, 0], causal_a[0, 0], atol=1e-4)
    decoder.set_bidirectional(hf, False)
    assert torch.allclose(_token_states(hf, a, mask), causal_a, atol=1e-6)


def test_bidirectional_decoder_folder_stays_bidirectional_on_reload(tiny_decoder, tmp_path):
    torch.manual_seed(0)
    model = _st(tiny_decoder)
    assert decoder.is_decoder(model[0].auto_model)
    configure_encoder(model, TrainingConfig(bidirectional=True, pooling="last"))
    before = _vectors(model, TEXTS[:1])  # one text: no padding, so the attention modules' own flag decides
    causal = _st(tiny_decoder)
    configure_encoder(causal, TrainingConfig(pooling="last"))
    assert not np.allclose(_vectors(causal, TEXTS[:1]), before, atol=1e-4)
    model.save(str(tmp_path / "m"))
    reloaded = _st(str(tmp_path / "m"))
    np.testing.assert_allclose(_vectors(reloaded, TEXTS[:1]), before, atol=1e-6)
    assert all(
        m.is_causal is False for m in reloaded[0].auto_model.modules() if hasattr(m, "is_causal") and m is not reloaded[0].auto_model
    )


def test_a_chat_template_does_not_wrap_what_a_decoder_embeds(tiny_decoder, tmp_path):
    # An instruct model's tokenizer carries a chat template; sentence-transformers would render every
    # passage through it (a fixed preamble first, the template's closing token last).
    chatty = tmp_path / "chatty"
    shutil.copytree(tiny_decoder, chatty)
    tok = AutoTokenizer.from_pretrained(str(chatty))
    tok.chat_template = "{% for m in messages %}search index : {{ m['content'] }} .{% endfor %}"
    tok.save_pretrained(str(chatty))
    wrapped = SentenceTransformer(str(chatty), device="cpu")  # as sentence-transformers opens it
    assert "message" in wrapped[0].modality_config
    assert "message" not in _st(str(chatty))[0].modality_config  # as this package opens it (base-model scoring)
    plain = _st(tiny_decoder)
    configure_encoder(plain, TrainingConfig(pooling="last"))
    templated_ids = wrapped.tokenize(TEXTS[:1])["input_ids"]
    configure_encoder(wrapped, TrainingConfig(pooling="last"))
    assert "message" not in wrapped[0].modality_config
    assert wrapped.tokenize(TEXTS[:1])["input_ids"].tolist() == plain.tokenize(TEXTS[:1])["input_ids"].tolist() != templated_ids.tolist()
    np.testing.assert_allclose(_vectors(wrapped), _vectors(plain), atol=1e-6)
    wrapped.save(str(tmp_path / "published"))
    np.testing.assert_allclose(_vectors(_st(str(tmp_path / "published"))), _vectors(plain), atol=1e-6)  # and so on reload


def test_query_instruction_changes_queries_not_passages(tiny_decoder, tmp_path):
    model = _st(tiny_decoder)
    prefix = configure_encoder(model, TrainingConfig(pooling="last", query_instruction="search index : "))
    assert prefix == "search index : "
    plain = _st(tiny_decoder)
    configure_encoder(plain, TrainingConfig(pooling="last"))
    with_prompt, without = Encoder(model, "m", "m", "h"), Encoder(plain, "p", "p", "h")
    assert not np.allclose(encode_queries(with_prompt, TEXTS), encode_queries(without, TEXTS), atol=1e-4)
    np.testing.assert_allclose(encode(with_prompt, TEXTS), encode(without, TEXTS), atol=1e-6)  # passages: no prefix
    model.save(str(tmp_path / "m"))
    assert _st(str(tmp_path / "m")).prompts["query"] == "search index : "  # published with the folder


def test_decoder_lora_training_end_to_end(tiny_decoder, tmp_path):
    cfg = TrainingConfig(adapter="lora", lora_rank=2, pooling="last", bidirectional=True, query_instruction="query : ",
                         learning_rate=5e-3, batch_size=4, max_seq_length=16, eval_at_start=False, bf16=False)  # fmt: skip
    result = train_encoder(tiny_decoder, _examples(), tmp_path / "out", cfg)
    reloaded = _st(str(result.model_dir))
    assert reloaded.prompts["query"] == "query : " and any(isinstance(m, decoder.BidirectionalMask) for m in reloaded)
    assert result.adapter["lora_modules"] and (Path(result.model_dir) / "adapter" / "adapter_model.safetensors").is_file()


# ------------------------------------------------------------------------------------ GPU path


def test_gpu_path_device_selection(monkeypatch):
    """Without a GPU here, the choices the GPU path makes are checked with faked device queries:
    encoders and training pick CUDA when torch sees one, mining moves its FAISS index there."""
    import faiss

    from retriever_forge import encoding, indexing
    from retriever_forge.numerics import autocast_device_type

    assert encoding.default_device() == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert encoding.default_device() == "cuda" and autocast_device_type("cuda:1") == "cuda"
    moved = []
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", lambda index: moved.append(index) or index)
    index = indexing.build_search_index(np.eye(4, dtype=np.float32), "flat")
    assert moved == [index] and index.ntotal == 4
    moved.clear()
    indexing.build_search_index(np.eye(4, dtype=np.float32), "flat", use_gpu=False)
    assert moved == []


def test_encode_with_model_and_embed_batch_give_encodes_rows(tiny):
    from retriever_forge.encoding import embed_batch, encode_with_model

    texts = ["the shortest path in a graph", "hash", "a sorting algorithm returns a sorted list of numbers", "matrix"]
    model = open_sentence_transformer(tiny, device="cpu")
    bare = encode_with_model(model, texts, batch_size=2, show_progress=False)
    assert np.array_equal(bare, encode(Encoder(model=model, name="tiny", path=tiny, weights_hash="h"), texts, batch_size=2))
    assert bare.shape == (4, 32) and np.allclose(np.linalg.norm(bare, axis=1), 1.0, atol=1e-5)
    with torch.inference_mode():
        one = embed_batch(model, texts[1:2]).numpy()
    np.testing.assert_allclose(one[0], bare[1], atol=1e-6)
