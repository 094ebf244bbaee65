"""Benchmarks behind ``balancedet bench``: our implementations against a named baseline, in one run."""
