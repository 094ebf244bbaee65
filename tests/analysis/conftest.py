"""The engine tests' tiny run (24 training and 8 validation digits scenes of 64 px), for the end-to-end tests."""

from tests.engine.conftest import tiny_data  # noqa: F401
