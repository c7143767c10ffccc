"""Predictive intervals, window probabilities, and uncertainty-quality metrics (pure functions)."""
