"""Running beyond one machine with existing engines: Kubernetes (through Dagster), torchrun,
a shared ``vllm serve`` endpoint, and sharded FAISS indexes. No cluster code of our own.

* :func:`k8s_executor_config` / :func:`k8s_adapt_retriever_job`: the whole graph with
  ``dagster_k8s.k8s_job_executor``: every asset runs as its own Kubernetes Job, and the GPU
  assets (query generation, judging, fine-tuning, the corpus index) request
  ``nvidia.com/gpu`` through ``per_step_k8s_config``. Loaded by
  :mod:`retriever_forge.orchestration.definitions_k8s` (needs the ``k8s`` extra: ``pip install
  retriever-forge[k8s]``).
* :class:`TorchrunLaunch`: the ``torchrun ... -m retriever_forge.orchestration.train_cli`` command line for
  multi-GPU / multi-node fine-tuning (or ``accelerate launch``), and
  :func:`run_training_with_pipes` to launch it from an asset with Dagster Pipes
  (``PipesSubprocessClient``), which receives rank 0's result as materialization metadata.
* :class:`VLLMServe`: the ``vllm serve`` command of a shared generation server and the
  :class:`~retriever_forge.orchestration.resources.LLMResource` that points the pipeline at it (``openai``
  backend, many concurrent requests).
* FAISS beyond memory: ``corpus_index`` with ``index_type: ivfpq`` compresses vectors to
  ``dimension / 8`` bytes; :func:`retriever_forge.indexing.build_sharded_index` builds IVF /
  IVF-PQ shards (each shard can be its own Kubernetes Job: :func:`index_shard_commands`) and
  merges their inverted lists into one on-disk file.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

# Assets whose work is GPU-bound when a GPU exists (the LLM stages, training, encoding the corpus).
GPU_ASSETS: dict[str, int] = {
    "synthetic_queries": 1,
    "relevance_judgments": 1,
    "fine_tuned_encoder": 1,
    "corpus_index": 1,
}


def gpu_step_k8s_config(gpus: int, cpu: str = "8", memory: str = "32Gi", node_selector: dict | None = None,
                        tolerate_gpu_taint: bool = True) -> dict:  # fmt: skip
    """A ``dagster-k8s/config``-shaped dict that gives a step's pod ``gpus`` GPUs.

    >>> gpu_step_k8s_config(2)["container_config"]["resources"]["limits"]["nvidia.com/gpu"]
    2
    """
    config: dict = {
        "container_config": {
            "resources": {
                "requests": {"cpu": cpu, "memory": memory, "nvidia.com/gpu": gpus},
                "limits": {"memory": memory, "nvidia.com/gpu": gpus},
            }
        },
        "pod_spec_config": {},
    }
    if node_selector:
        config["pod_spec_config"]["node_selector"] = dict(node_selector)
    if tolerate_gpu_taint:
        config["pod_spec_config"]["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return config


def cpu_step_k8s_config(cpu: str = "2", memory: str = "8Gi") -> dict:
    return {"container_config": {"resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory}}}}


def k8s_executor_config(
    image: str,
    namespace: str = "retriever-forge",
    gpu_assets: dict[str, int] | None = None,
    env: dict[str, str] | None = None,
    pass_env: list[str] | None = None,
    max_concurrent: int = 8,
    gpu_node_selector: dict | None = None,
) -> dict:
    """``k8s_job_executor`` config: one Job per asset, GPUs for the GPU assets.

    ``env`` sets variables in every step pod; ``pass_env`` names variables copied from the
    process that launches the steps (it must have them). Artifacts must live where every pod
    can read them: set the ``artifact_store`` resource's ``root`` to object storage
    (``s3://...``, the ``s3`` extra) in the run config, and ``work_dir`` to a pod-local path.
    """
    gpu_assets = GPU_ASSETS if gpu_assets is None else gpu_assets
    return {
        "job_image": image,
        "job_namespace": namespace,
        "image_pull_policy": "IfNotPresent",
        "env_vars": [*(f"{k}={v}" for k, v in sorted((env or {}).items())), *(pass_env or [])],
        "max_concurrent": max_concurrent,
        "step_k8s_config": cpu_step_k8s_config(),
        "per_step_k8s_config": {name: gpu_step_k8s_config(n, node_selector=gpu_node_selector) for name, n in gpu_assets.items()},
    }


def k8s_adapt_retriever_job(image: str, namespace: str = "retriever-forge", gpu_assets: dict[str, int] | None = None, **kwargs):
    """The ``adapt_retriever`` graph as a job run by ``dagster_k8s.k8s_job_executor``."""
    import dagster as dg
    from dagster_k8s import k8s_job_executor

    from retriever_forge.orchestration.assets.common import dataset_partitions

    return dg.define_asset_job(
        "adapt_retriever_k8s",
        selection=dg.AssetSelection.all(),
        partitions_def=dataset_partitions,
        executor_def=k8s_job_executor.configured(k8s_executor_config(image, namespace, gpu_assets, **kwargs), name="k8s_gpu"),
        description="The whole graph, one Kubernetes Job per asset; GPU assets request nvidia.com/gpu.",
    )


def step_job_spec(executor_config: dict, step: str, run_id: str = "0" * 36):
    """The ``V1Job`` the executor would submit for ``step`` (built by dagster-k8s, not submitted).

    Used by the tests and handy for ``kubectl apply --dry-run`` reviews.
    """
    from dagster_k8s.job import DagsterK8sJobConfig, UserDefinedDagsterK8sConfig, construct_dagster_k8s_job, get_k8s_job_name

    job_config = DagsterK8sJobConfig(
        job_image=executor_config["job_image"],
        image_pull_policy=executor_config.get("image_pull_policy"),
        env_vars=executor_config.get("env_vars"),
    )
    # A per-step entry carries the whole resource spec of that step (the executor merges it
    # over step_k8s_config, and ours set every key the base sets).
    per_step = executor_config.get("per_step_k8s_config", {})
    merged = UserDefinedDagsterK8sConfig.from_dict(per_step[step] if step in per_step else executor_config.get("step_k8s_config", {}))
    name = "dagster-step-" + get_k8s_job_name(run_id, step)
    return construct_dagster_k8s_job(
        job_config=job_config,
        args=["dagster", "api", "execute_step"],
        job_name=name,
        user_defined_k8s_config=merged,
        pod_name=name,
        component="step_worker",
        labels={"dagster/op": step},
    )


# --------------------------------------------------------------------------------------------
# Multi-GPU / multi-node training.


@dataclass
class TorchrunLaunch:
    """How to start :mod:`retriever_forge.orchestration.train_cli` under ``torchrun`` (or ``accelerate``).

    One node: ``nnodes=1`` and ``nproc_per_node`` = GPUs. Several nodes (e.g. a Kubernetes
    indexed Job or a Kubeflow ``PyTorchJob``): the same command on every node with ``nnodes``
    and a shared ``rdzv_endpoint``.
    """

    nproc_per_node: int = 1
    nnodes: int = 1
    rdzv_endpoint: str | None = None  # host:port of the rendezvous (c10d), several nodes only
    rdzv_id: str = "retriever-forge"
    launcher: str = "torchrun"  # torchrun | accelerate
    executable: str | None = None  # path of the torchrun / accelerate script (default: from PATH)
    extra_env: dict[str, str] = field(default_factory=dict)

    def command(self, examples: str | Path, base_model: str, output_dir: str | Path, config: dict | None = None,
                dev_corpus: str | Path | None = None) -> list[str]:  # fmt: skip
        """The argv to run (a list: no shell quoting issues); ``dev_corpus``: a parquet of ``doc_id, text`` for the dev pool."""
        cli = ["-m", "retriever_forge.orchestration.train_cli", "--examples", str(examples), "--base-model", base_model,
               "--output-dir", str(output_dir), "--config-json", json.dumps(config or {}, sort_keys=True)]  # fmt: skip
        if dev_corpus is not None:
            cli += ["--dev-corpus", str(dev_corpus)]
        if self.launcher == "torchrun":
            head = [self.executable or "torchrun", "--nproc_per_node", str(self.nproc_per_node), "--nnodes", str(self.nnodes)]
            if self.nnodes > 1:
                if not self.rdzv_endpoint:
                    raise ValueError("several nodes need rdzv_endpoint (host:port)")
                head += ["--rdzv_backend", "c10d", "--rdzv_endpoint", self.rdzv_endpoint, "--rdzv_id", self.rdzv_id]
            else:
                head += ["--standalone"]
            return head + cli
        if self.launcher == "accelerate":
            head = [
                self.executable or "accelerate",
                "launch",
                "--multi_gpu" if self.nproc_per_node * self.nnodes > 1 else "--num_processes=1",
            ]
            if self.nproc_per_node * self.nnodes > 1:
                head += ["--num_processes", str(self.nproc_per_node * self.nnodes), "--num_machines", str(self.nnodes)]
                if self.nnodes > 1:
                    host, _, port = (self.rdzv_endpoint or "").partition(":")
                    if not host:
                        raise ValueError("several nodes need rdzv_endpoint (host:port)")
                    head += ["--main_process_ip", host, "--main_process_port", port or "29500"]
            return head + cli
        raise ValueError(f"unknown launcher {self.launcher!r} (torchrun, accelerate)")

    def shell(self, *args, **kwargs) -> str:
        return shlex.join(self.command(*args, **kwargs))


def run_training_with_pipes(context, launch: TorchrunLaunch, examples: str | Path, base_model: str, output_dir: str | Path,
                            config: dict | None = None, pipes_client=None, env: dict[str, str] | None = None,
                            dev_corpus: str | Path | None = None):  # fmt: skip
    """Launch the training command from an asset with Dagster Pipes; returns the Pipes result
    (``.get_materialize_result()`` carries rank 0's metadata: steps, final loss, weights hash).

    ``pipes_client`` defaults to ``PipesSubprocessClient``; a ``PipesK8sClient`` (dagster-k8s)
    runs the same command in a pod instead.
    """
    import dagster as dg

    client = pipes_client or dg.PipesSubprocessClient()
    return client.run(context=context, command=launch.command(examples, base_model, output_dir, config, dev_corpus),
                      env={**launch.extra_env, **(env or {})})  # fmt: skip


# --------------------------------------------------------------------------------------------
# A shared vLLM server.


@dataclass
class VLLMServe:
    """A ``vllm serve`` OpenAI-compatible server shared by every run, and the resource that uses it.

    vLLM batches concurrent requests continuously, so throughput grows with the number of
    requests in flight: ``max_concurrency`` on the client side should be at least
    ``max_num_seqs`` / number of clients.

    The server binds to loopback unless told otherwise: a server shared by a team is exposed on
    purpose, by naming the interface (or the pod's address) in ``host``, behind whatever network
    policy guards it, never by default.
    """

    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    tensor_parallel_size: int = 1
    max_num_seqs: int = 256
    max_model_len: int = 4096
    gpu_memory_utilization: float = 0.9
    served_model_name: str | None = None
    max_concurrency: int = 64  # client side: requests in flight per pipeline run

    def command(self) -> list[str]:
        cmd = ["vllm", "serve", self.model, "--host", self.host, "--port", str(self.port),
               "--tensor-parallel-size", str(self.tensor_parallel_size), "--max-num-seqs", str(self.max_num_seqs),
               "--max-model-len", str(self.max_model_len), "--gpu-memory-utilization", str(self.gpu_memory_utilization)]  # fmt: skip
        if self.served_model_name:
            cmd += ["--served-model-name", self.served_model_name]
        return cmd

    def base_url(self, host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}/v1"

    def llm_resource(self, host: str | None = None, batch_size: int = 64):
        """An :class:`LLMResource` for the pipeline, pointed at this server."""
        from retriever_forge.orchestration.resources import LLMResource

        return LLMResource(backend="openai", base_url=self.base_url(host), model=self.served_model_name or self.model,
                           max_concurrency=self.max_concurrency, batch_size=batch_size)  # fmt: skip


# --------------------------------------------------------------------------------------------
# Sharded FAISS builds.


def index_shard_commands(
    embeddings: str | Path, folder: str | Path, n_vectors: int, shards: int, python: str = "python"
) -> list[list[str]]:
    """One command per shard of :func:`retriever_forge.indexing.build_sharded_index`'s step 2,
    for running shards as separate jobs (after ``train_sharded`` wrote ``trained.faiss``)."""
    from retriever_forge.indexing import shard_ranges

    folder = Path(folder)
    return [
        [python, "-c", "import sys, numpy as np; from retriever_forge.indexing import build_shard; "
         "build_shard(sys.argv[1], np.load(sys.argv[2], mmap_mode='r'), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])",
         str(folder / "shards" / "trained.faiss"), str(embeddings), str(s), str(e), str(folder / "shards" / f"shard-{i:04d}.faiss")]
        for i, (s, e) in enumerate(shard_ranges(n_vectors, shards))
    ]  # fmt: skip
