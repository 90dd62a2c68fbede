"""Evaluation: metrics of protected models, reports."""
