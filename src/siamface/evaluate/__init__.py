"""Scores -> metrics: verification error rates, thresholds, plots and protocols."""
