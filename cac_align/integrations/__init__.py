"""Other people's trainers, wired to our rewards by one call, never by editing their files.

- :mod:`cac_align.integrations.flow_grpo`: the public Flow-GRPO trainer (yifan123/flow_grpo);
  ``python -m cac_align.integrations.flow_grpo`` launches its scripts with our rewards installed.
"""
