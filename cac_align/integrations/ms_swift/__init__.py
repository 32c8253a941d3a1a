"""CaC stage 3 (two-turn GRPO) on ms-swift, the engine the paper trained with.

- :mod:`.cac_rows` (no ms-swift needed): video specs, dataset rows from our annotations, the
  turn-2 plan and a rollout's reward, all through our own stage-3 code;
- :mod:`.cac_plugin` (imported by ms-swift, ``--external_plugins``): the ``cac_qwen3_vl``
  template, the ``cac`` multi-turn scheduler and the ``cac_stage3`` reward;
- ``python -m cac_align.integrations.ms_swift prepare RECIPE`` writes the dataset of a stage-3
  recipe's split; ``... plugin`` prints the plugin file's path for ``--external_plugins``.

Launchers: ``recipes/cac/stage3_swift*.sh``; the guide: docs/cac_training.md.
"""
