"""Integration fixtures live in tests/conftest.py (tiny_model_dir is shared with tests/data)."""
