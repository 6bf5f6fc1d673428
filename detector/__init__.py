"""ganwatch core: model, windowing, scaling, scores, thresholds and the worker loop.

Nothing here imports a connector (Kafka, Redis, files); ``tests/test_layout.py`` keeps it so.
"""

__version__ = "0.1.0"
