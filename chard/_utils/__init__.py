"""Foundation helpers that import nothing from chard outside ``_utils``."""
