"""YAML presets for ``balancedet train --config NAME``."""
