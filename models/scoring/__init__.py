"""Scores of recognizers against simulated ground truth, and the classical baselines (torch-free).

Used alike by the demo (``scanlens.models.demo``), the training modules and the tests.
"""
