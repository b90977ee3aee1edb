"""chard vs Celery benchmarks; run ``python -m bench`` (see bench/README.md)."""
