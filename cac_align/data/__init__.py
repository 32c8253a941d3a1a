"""Data: synthetic anomaly videos and (later) training-set pipelines."""
