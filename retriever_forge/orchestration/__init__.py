"""Everything that imports Dagster: the asset graph, resources, jobs, schedules and sensors,
the code location (``definitions.py``, ``definitions_k8s.py``), the Kubernetes/Pipes launch
(``scaleout.py``, ``train_cli.py``) and the command line (``cli.py``).

The domain modules one level up import no Dagster and nothing from here
(``tests/test_layering.py`` checks it).
"""
