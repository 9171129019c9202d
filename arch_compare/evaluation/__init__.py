"""Metric functions (seqio conventions), the HumanEval sandbox and style metrics."""
