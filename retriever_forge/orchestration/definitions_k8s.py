"""The code location for a Kubernetes deployment: every definition of
:mod:`retriever_forge.orchestration.definitions` plus ``adapt_retriever_k8s``, the whole graph with one
Kubernetes Job per asset and GPUs for the GPU assets (:mod:`retriever_forge.orchestration.scaleout`).

Needs the ``k8s`` extra (``pip install 'retriever-forge[k8s]'``). Configure with
``RETRIEVER_FORGE_IMAGE`` (the image the step pods run), ``RETRIEVER_FORGE_K8S_NAMESPACE``, and
point the artifact store at object storage every pod can reach (``RETRIEVER_FORGE_HOME=s3://bucket/forge``).
Load it with ``dagster dev -m retriever_forge.orchestration.definitions_k8s`` or a workspace entry.
"""

from __future__ import annotations

import os

import dagster as dg

from retriever_forge.orchestration.definitions import build_definitions
from retriever_forge.orchestration.scaleout import k8s_adapt_retriever_job

IMAGE = os.environ.get("RETRIEVER_FORGE_IMAGE", "retriever-forge:latest")
NAMESPACE = os.environ.get("RETRIEVER_FORGE_K8S_NAMESPACE", "retriever-forge")

adapt_retriever_k8s = k8s_adapt_retriever_job(IMAGE, NAMESPACE)

# Built here rather than merged from definitions.defs: Dagster's loader refuses a module with more
# than one Definitions object at module level, and an imported `defs` would be a second one.
defs = dg.Definitions.merge(build_definitions(), dg.Definitions(jobs=[adapt_retriever_k8s]))
