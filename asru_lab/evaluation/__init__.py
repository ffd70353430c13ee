"""Evaluation: tasks, metrics, judges, reports."""
