"""retriever-forge: adapt a dense retriever to a new corpus, as a Dagster code location.

The domain modules (datasets, querygen, judging, mining, training, indexing, evaluation,
artifacts, provenance) do the work and import no Dagster; ``orchestration/`` (its ``assets/``,
``resources/``, ``jobs/`` and ``definitions.py``) wires them into the asset graph.
"""

__version__ = "0.1.0"
