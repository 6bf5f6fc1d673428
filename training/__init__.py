"""Offline training: fit a model on normal readings, calibrate its threshold, evaluate, report."""
