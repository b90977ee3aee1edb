"""A project for the canvas end-to-end tests (tests/integration/test_canvas_worker.py)."""
