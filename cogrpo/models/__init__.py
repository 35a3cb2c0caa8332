"""Masked image model backends behind one protocol."""
