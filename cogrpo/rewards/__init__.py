"""Rewards and scorers: one registry serves ``--reward`` in training and ``--bench`` in evaluation."""
