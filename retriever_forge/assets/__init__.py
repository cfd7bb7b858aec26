"""The asset graph, per dataset partition::

    corpus ─┬─> synthetic_queries ─> relevance_judgments ─> hard_negatives ─> training_examples
            ├─> eval_queries                                                        │
            └─> eval_qrels                     fine_tuned_encoder <─────────────────┘
                                                      │
                                 corpus_index <───────┤
                                       └──────> benchmark_scores

Assets are thin: they read upstream artifacts, call the domain modules, write a new
content-addressed artifact with its provenance manifest, and attach metadata and checks.
"""

from retriever_forge.assets.data import corpus
from retriever_forge.assets.evaluation import benchmark_scores, corpus_index
from retriever_forge.assets.generation import relevance_judgments, synthetic_queries
from retriever_forge.assets.lineage_hooks import openlineage_complete, openlineage_fail
from retriever_forge.assets.training import fine_tuned_encoder, hard_negatives, training_examples

# Every materialization reports COMPLETE/FAIL to OpenLineage when a transport is configured.
ALL_ASSETS = [a.with_hooks({openlineage_complete, openlineage_fail}) for a in [
    corpus,
    synthetic_queries,
    relevance_judgments,
    hard_negatives,
    training_examples,
    fine_tuned_encoder,
    corpus_index,
    benchmark_scores,
]]

__all__ = ["ALL_ASSETS"]
