"""Co-GRPO for masked image generators."""

__version__ = "0.1.0"
