"""Evaluation: detection bench metrics, VBench dimensions, expert anomaly rate, the report."""
