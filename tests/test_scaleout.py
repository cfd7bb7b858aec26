"""Scale-out configuration: the Kubernetes job spec, torchrun/accelerate command lines (and a
real torchrun run on CPU with gloo), Dagster Pipes, the shared vLLM server resource."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from _tiny_encoder import tiny_encoder_folder

from retriever_forge.orchestration.scaleout import (
    GPU_ASSETS,
    TorchrunLaunch,
    VLLMServe,
    gpu_step_k8s_config,
    k8s_executor_config,
    step_job_spec,
)
from retriever_forge.orchestration.train_cli import equal_steps, shard_examples

dagster_k8s = pytest.importorskip("dagster_k8s")
TORCHRUN = str(Path(sys.executable).parent / "torchrun")


def test_k8s_job_runs_every_asset_with_gpus_for_the_gpu_assets():
    from retriever_forge.orchestration.definitions import defs as base
    from retriever_forge.orchestration.definitions_k8s import defs

    job = defs.get_job_def("adapt_retriever_k8s")
    assert job.executor_def.name == "k8s_gpu"
    # Every materialized asset: the local job's selection (the observable dataset_source is observed, not run).
    local = {k.to_user_string() for k in base.get_job_def("adapt_retriever").asset_layer.selected_asset_keys}
    assert "benchmark_scores" in local and "dataset_source" not in local
    assert {k.to_user_string() for k in job.asset_layer.selected_asset_keys} == local
    assert set(GPU_ASSETS) <= {n.name for n in job.graph.node_defs}  # names of real steps
    assert base.get_job_def("adapt_retriever")  # the local job is still there


def test_step_job_spec_requests_gpus_only_for_gpu_steps():
    cfg = k8s_executor_config("registry.example/forge:1", env={"HF_HOME": "/cache/hf"}, gpu_node_selector={"gpu": "a100"})
    job = step_job_spec(cfg, "fine_tuned_encoder")
    pod = job.spec.template.spec
    container = pod.containers[0]
    assert container.image == "registry.example/forge:1"
    assert container.resources.limits["nvidia.com/gpu"] == "1" and container.resources.requests["nvidia.com/gpu"] == "1"
    assert pod.node_selector == {"gpu": "a100"} and pod.tolerations[0].key == "nvidia.com/gpu"
    assert {"name": "HF_HOME", "value": "/cache/hf"}.items() <= container.env[0].to_dict().items()
    cpu = step_job_spec(cfg, "hard_negatives").spec.template.spec.containers[0]
    assert "nvidia.com/gpu" not in (cpu.resources.limits or {}) and cpu.resources.requests["cpu"] == "2"
    assert gpu_step_k8s_config(4)["container_config"]["resources"]["requests"]["nvidia.com/gpu"] == 4


def test_torchrun_and_accelerate_command_lines():
    single = TorchrunLaunch(nproc_per_node=4).command("ex.parquet", "all-MiniLM-L6-v2", "/out", {"batch_size": 64})
    assert single[:6] == ["torchrun", "--nproc_per_node", "4", "--nnodes", "1", "--standalone"]
    assert single[6:9] == ["-m", "retriever_forge.orchestration.train_cli", "--examples"] and json.loads(single[-1]) == {"batch_size": 64}
    multi = TorchrunLaunch(nproc_per_node=8, nnodes=2, rdzv_endpoint="head:29400").command("e", "m", "o")
    assert multi[multi.index("--rdzv_endpoint") + 1] == "head:29400" and "--standalone" not in multi
    with pytest.raises(ValueError, match="rdzv_endpoint"):
        TorchrunLaunch(nnodes=2).command("e", "m", "o")
    acc = TorchrunLaunch(nproc_per_node=4, nnodes=2, rdzv_endpoint="head:29500", launcher="accelerate").command("e", "m", "o")
    assert acc[:3] == ["accelerate", "launch", "--multi_gpu"] and acc[acc.index("--num_processes") + 1] == "8"
    assert acc[acc.index("--main_process_ip") + 1] == "head"


def test_vllm_server_command_and_resource():
    serve = VLLMServe(model="Qwen/Qwen2.5-7B-Instruct", tensor_parallel_size=2, max_num_seqs=128, max_concurrency=96)
    cmd = serve.command()
    assert cmd[:3] == ["vllm", "serve", "Qwen/Qwen2.5-7B-Instruct"]
    assert cmd[cmd.index("--tensor-parallel-size") + 1] == "2" and cmd[cmd.index("--max-num-seqs") + 1] == "128"
    assert (
        cmd[cmd.index("--host") + 1] == "127.0.0.1" and serve.base_url() == "http://127.0.0.1:8000/v1"
    )  # loopback unless exposed on purpose
    resource = serve.llm_resource(host="vllm.forge.svc")
    assert (resource.backend, resource.base_url, resource.max_concurrency) == ("openai", "http://vllm.forge.svc:8000/v1", 96)
    from retriever_forge.llm import build_llm  # the backend the resource builds (no server needed to construct it)

    llm = build_llm("openai", base_url=resource.base_url, model=resource.model, max_concurrency=resource.max_concurrency)
    assert llm.max_concurrency == 96


def test_examples_are_sharded_by_rank():
    df = pl.DataFrame({"split": ["train"] * 7 + ["dev"] * 2, "query": list("abcdefghi")})
    shards = [shard_examples(df, r, 3) for r in range(3)]
    train = [s.filter(pl.col("split") == "train")["query"].to_list() for s in shards]
    assert sorted(sum(train, [])) == list("abcdefg") and all(s.filter(pl.col("split") == "dev").height == 2 for s in shards)
    assert equal_steps(7, 3, 2, 1) == 1 and equal_steps(64, 2, 8, 2) == 8


def _examples(n: int = 16) -> pl.DataFrame:
    topics = ["sort the list", "hash table index", "shortest path graph", "parser tree compiler"]
    rows = []
    for i in range(n):
        t = topics[i % 4]
        rows.append({"query_id": f"q{i}", "query": t.split()[0] + " query", "positive_id": f"p{i}", "positive_text": f"{t} {i % 3}",
                     "positive_grade": 3.0, "negative_ids": [f"n{i}"], "negative_texts": [topics[(i + 1) % 4]], "negative_grades": [0.0],
                     "split": "dev" if i >= n - 2 else "train"})  # fmt: skip
    return pl.DataFrame(rows)


def _run_torchrun(tmp_path, nproc: int) -> list[dict]:
    model = tiny_encoder_folder(tmp_path / "m")
    _examples().write_parquet(tmp_path / "ex.parquet")
    launch = TorchrunLaunch(nproc_per_node=nproc, executable=TORCHRUN)
    cmd = launch.command(tmp_path / "ex.parquet", model, tmp_path / "out", {"batch_size": 4, "max_seq_length": 32, "device": "cpu"})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_torchrun_one_process_trains_and_publishes(tmp_path):
    (rank0,) = _run_torchrun(tmp_path, 1)
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert rank0["world_size"] == 1 and result["steps"] == 4 and (tmp_path / "out" / "model" / "model.safetensors").exists()


@pytest.mark.slow
def test_torchrun_two_processes_keep_identical_weights(tmp_path):
    rows = _run_torchrun(tmp_path, 2)
    assert sorted(r["rank"] for r in rows) == [0, 1]
    assert all(r["world_size"] == 2 and r["steps"] == equal_steps(14, 2, 4, 1) for r in rows)
    # Averaged gradients, same optimizer steps: both ranks end with the same weights.
    assert rows[0]["last_checkpoint_sha256"] and len({r["last_checkpoint_sha256"] for r in rows}) == 1
    published = json.loads((tmp_path / "out" / "result.json").read_text())
    assert published["weights_hash"] == next(r for r in rows if r["rank"] == 0)["weights_hash"]


@pytest.mark.slow
def test_training_launched_through_dagster_pipes(tmp_path):

    from retriever_forge.orchestration.scaleout import run_training_with_pipes

    model = tiny_encoder_folder(tmp_path / "m")
    _examples().write_parquet(tmp_path / "ex.parquet")

    @dg.asset
    def distributed_encoder(context, pipes: dg.PipesSubprocessClient):
        launch = TorchrunLaunch(nproc_per_node=1, executable=TORCHRUN)
        return run_training_with_pipes(context, launch, tmp_path / "ex.parquet", model, tmp_path / "out",
                                       {"batch_size": 4, "max_seq_length": 32, "device": "cpu"}, pipes_client=pipes,
                                       env={"OMP_NUM_THREADS": "1"}).get_materialize_result()  # fmt: skip

    result = dg.materialize([distributed_encoder], resources={"pipes": dg.PipesSubprocessClient()})
    assert result.success
    meta = result.asset_materializations_for_node("distributed_encoder")[0].metadata
    assert meta["steps"].value == 4 and meta["world_size"].value == 1


def test_shared_vllm_resource_keeps_many_requests_in_flight(tmp_path):
    """The resource pointed at an OpenAI-compatible server (a stub standing in for ``vllm
    serve``) sends ``max_concurrency`` requests at once: what lets vLLM batch them."""
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from retriever_forge.llm import SamplingParams

    state = {"in_flight": 0, "peak": 0, "served": 0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, reply: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def do_GET(self):  # noqa: N802 - http.server's name
            self._send(json.dumps({"object": "list", "data": [{"id": "stub-model", "object": "model", "root": "stub-model"}]}).encode())

        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                state["in_flight"] += 1
                state["peak"] = max(state["peak"], state["in_flight"])
            time.sleep(0.05)  # a request being decoded
            reply = json.dumps({"choices": [{"message": {"content": "q: " + body["messages"][0]["content"][:8]}}],
                                "usage": {"prompt_tokens": 3, "completion_tokens": 2}}).encode()  # fmt: skip
            with lock:
                state["in_flight"] -= 1
                state["served"] += 1
            self._send(reply)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        serve = VLLMServe(model="stub-model", host="127.0.0.1", port=server.server_address[1], max_concurrency=16)
        llm = serve.llm_resource(batch_size=64).build(tmp_path, chat=True)
        outputs = llm.generate([f"passage number {i}" for i in range(64)], SamplingParams(max_new_tokens=8))
    finally:
        server.shutdown()
    assert [o.text for o in outputs[:2]] == ["q: passage ", "q: passage "] and state["served"] == 64
    assert state["peak"] >= 12  # up to 16 in flight (thread start-up can shave a few)
