"""Dagster resources: the artifact store, the LLM and the encoder.

Each is a ``ConfigurableResource`` whose fields a user sets in ``definitions.py``, through
environment variables, or per run in the Launchpad. They are thin: the work is done by the
plain domain modules they construct.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from retriever_forge.artifacts import ArtifactRef, ArtifactStore
from retriever_forge.datasets import PROJECT_ROOT

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

    from retriever_forge.encoding import Encoder

DEFAULT_HOME = os.environ.get("RETRIEVER_FORGE_HOME", str(PROJECT_ROOT / ".forge"))
# Scratch space is always on a local disk: beside a local store, else in the user's cache folder.
DEFAULT_WORK_DIR = os.environ.get("RETRIEVER_FORGE_WORK_DIR") or (
    str(Path(DEFAULT_HOME) / "work") if "://" not in DEFAULT_HOME else str(Path.home() / ".cache" / "retriever-forge" / "work")
)


class ArtifactStoreResource(dg.ConfigurableResource):
    """Where artifacts live: a local folder (default) or an fsspec URL such as ``s3://bucket/forge``."""

    root: str = Field(default=DEFAULT_HOME, description="Local folder or fsspec URL of the artifact store.")
    work_dir: str = Field(
        default=DEFAULT_WORK_DIR,
        description="Local scratch folder (training checkpoints, caches); must be on a local disk.",
    )

    def get_store(self) -> ArtifactStore:
        return ArtifactStore(self.root, cache_dir=Path(self.work_dir) / "artifact-cache")

    def throughput_log(self):
        """The rates earlier runs measured on this machine (``work/throughput.json``), for the plan."""
        from retriever_forge.budget import ThroughputLog

        return ThroughputLog(Path(self.work_dir) / "throughput.json")

    def scratch(self, *parts: str) -> Path:
        """A folder under ``work_dir``; parts that would lead outside it (``..``, absolute) are refused."""
        root = Path(self.work_dir).resolve()
        path = root.joinpath(*parts).resolve()
        if not path.is_relative_to(root):
            raise ValueError(f"scratch folder {'/'.join(parts)!r} would lie outside the work dir {root}")
        path.mkdir(parents=True, exist_ok=True)
        return path


class LLMResource(dg.ConfigurableResource):
    """The generator and judge LLM, behind one interface with interchangeable backends.

    ``backend``: ``transformers`` (local, CPU or GPU; loads GGUF), ``vllm`` (in-process vLLM),
    or ``openai`` (any OpenAI-compatible server, e.g. ``vllm serve``). Every generation is
    cached durably, keyed by model hash, prompt, sampling params and seed.
    """

    backend: str = Field(default="transformers", description="transformers | vllm | openai")
    model: str = Field(
        default="",
        description="Model id/path, or a bundled model: smollm2-135m, gemma3-270m; empty: the bundled SmolLM2-135M-Instruct GGUF.",
    )
    gguf_file: str | None = Field(default=None, description="GGUF file name inside `model` (transformers).")
    device: str | None = Field(default=None, description="cpu / cuda; default: cuda when available.")
    batch_size: int = Field(default=32, description="Prompts per decode wave / request wave, and per committed cache group.")
    dtype: str = Field(
        default="auto",
        description="transformers/vllm: compute dtype; auto = bfloat16 on GPUs and CPUs with native bf16, else float32.",
    )
    base_url: str | None = Field(default=None, description="openai backend: server URL, e.g. http://localhost:8000/v1")
    api_key_env: str = Field(default="OPENAI_API_KEY", description="Name of the env var holding the API key (never the key).")
    max_concurrency: int = Field(default=8, description="openai backend: concurrent requests.")
    tensor_parallel_size: int = Field(default=1, description="vllm backend: GPUs per model.")
    cache_path: str | None = Field(default=None, description="Generation cache (SQLite); default under the artifact store's work dir.")

    def build(self, default_cache_dir: Path, chat: bool = True, progress=None):
        """The configured backend wrapped in the durable generation cache.

        ``chat=False`` gives the same model without its chat template, for completion-format
        prompts (the bundled InPars query templates).
        """
        from retriever_forge.llm import build_llm

        if self.backend == "transformers":
            kwargs = {"model": self.model, "gguf_file": self.gguf_file, "device": self.device,
                      "batch_size": self.batch_size, "chat_template": chat, "dtype": self.dtype}  # fmt: skip
        elif self.backend == "openai":
            if not self.base_url:
                raise ValueError("LLMResource: backend 'openai' needs base_url (e.g. http://localhost:8000/v1)")
            kwargs = {"base_url": self.base_url, "model": self.model, "api_key_env": self.api_key_env,
                      "max_concurrency": self.max_concurrency, "chat": chat}  # fmt: skip
        elif self.backend == "vllm":
            kwargs = {"model": self.model, "gguf_file": self.gguf_file, "tensor_parallel_size": self.tensor_parallel_size,
                      "chat_template": chat, "dtype": self.dtype}  # fmt: skip
        else:
            raise ValueError(f"LLMResource: unknown backend {self.backend!r} (transformers, vllm, openai)")
        cache = Path(self.cache_path) if self.cache_path else default_cache_dir / "generations.sqlite"
        cache.parent.mkdir(parents=True, exist_ok=True)
        return build_llm(
            self.backend,
            cache_path=cache,
            cache_batch_size=self.batch_size,
            progress=progress,
            **{k: v for k, v in kwargs.items() if v is not None},
        )

    def record(self, model) -> dict:
        """The provenance record of a model :meth:`build` returned: its id, weights hash, backend and numerics."""
        return {"id": model.model_id, "weights_hash": model.weights_hash, "backend": self.backend, "numerics": model.numerics}

    def rate_key(self) -> str:
        """What a measured LLM throughput depends on here (:class:`retriever_forge.budget.ThroughputLog`)."""
        return f"{self.backend}:{self.model or 'bundled'}:{self.dtype}:{self.device or 'auto'}"


class EncoderResource(dg.ConfigurableResource):
    """The base dense encoder: a sentence-transformers model id or local folder."""

    model: str = Field(default="all-MiniLM-L6-v2", description="HF id or local folder of the base encoder.")
    device: str | None = Field(default=None, description="cpu / cuda; default: cuda when available.")
    batch_size: int = Field(default=64, description="Texts per encoding batch.")
    max_seq_length: int = Field(default=256, description="Tokens per text.")

    def load(self, artifact_store: ArtifactStoreResource, name_or_path: str | None = None) -> LoadedEncoder:
        """The base encoder (or the one at ``name_or_path``), encoding with this resource's batch
        size and caching corpus embeddings in ``artifact_store``'s work dir."""
        from retriever_forge.encoding import load_encoder

        encoder = load_encoder(name_or_path or self.model, device=self.device, max_seq_length=self.max_seq_length)
        return LoadedEncoder(encoder, artifact_store.scratch("embeddings"), self.batch_size)


@dataclass
class LoadedEncoder:
    """An encoder as the assets use it: the corpus embedded once per encoder (cached on disk),
    queries and other texts embedded fresh, and the provenance record of its weights."""

    encoder: Encoder
    cache_dir: Path
    batch_size: int

    @property
    def name(self) -> str:
        return self.encoder.name

    def encode_corpus(self, corpus: pl.DataFrame) -> np.ndarray:
        """The corpus table's passages (``title: text``) in row order; a read-only memmap of the cache."""
        from retriever_forge.encoding import corpus_embeddings

        return corpus_embeddings(self.encoder, corpus, self.cache_dir, self.batch_size)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Texts as they are (synthetic queries for the round trip, the judge's candidates and mining); not cached."""
        from retriever_forge.encoding import encode

        return encode(self.encoder, texts, batch_size=self.batch_size)

    def encode_queries(self, queries: list[str]) -> np.ndarray:
        """Search queries with the model's query prompt (:func:`retriever_forge.encoding.encode_queries`),
        at that function's own batch size, as the index and the benchmark always encoded them."""
        from retriever_forge.encoding import encode_queries

        return encode_queries(self.encoder, queries)

    def record(self) -> dict:
        """The provenance record of the weights (:meth:`retriever_forge.encoding.Encoder.record`)."""
        return self.encoder.record()


class ArtifactRefIOManager(dg.IOManager):
    """Persists each asset's :class:`ArtifactRef` (a small JSON pointer), not the data.

    The data itself is already in the write-once artifact store; the pointer per (asset,
    partition) is the only thing that is replaced on re-materialisation. Pointers live in the
    same store as the artifacts (:meth:`ArtifactStore.pointer_path`), so a step in another
    process or pod finds its upstream wherever the store is (a folder, ``s3://…``).
    """

    def __init__(self, store: ArtifactStore | None = None, root: str | None = None):
        """Give the ``store`` (or its ``root``); in a code location use :func:`artifact_ref_io_manager`,
        which takes the run's ``artifact_store`` resource, so pointers and artifacts share one store."""
        if (store is None) == (root is None):
            raise ValueError("ArtifactRefIOManager: give exactly one of store, root")
        self.store = store or ArtifactStore(root)

    def handle_output(self, context: dg.OutputContext, obj: ArtifactRef) -> None:
        partition = context.partition_key if context.has_partition_key else "__all__"
        self.store.write_pointer("/".join(context.asset_key.path), partition, obj)

    def load_input(self, context: dg.InputContext) -> ArtifactRef:
        asset = "/".join(context.asset_key.path)
        partition = context.asset_partition_key if context.has_asset_partitions else "__all__"
        try:
            return self.store.read_pointer(asset, partition)
        except KeyError as e:
            raise FileNotFoundError(f"{asset}: not materialised yet for this partition ({e.args[0]})") from None


@dg.io_manager(required_resource_keys={"artifact_store"},
               description="Stores each asset's ArtifactRef pointer in the configured artifact store.")  # fmt: skip
def artifact_ref_io_manager(init_context) -> ArtifactRefIOManager:
    """The :class:`ArtifactRefIOManager` of the run's ``artifact_store`` resource (one store, one config)."""
    return ArtifactRefIOManager(init_context.resources.artifact_store.get_store())
