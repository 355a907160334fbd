"""Efficacy evaluation: victim training, sampling, metrics and reports."""
