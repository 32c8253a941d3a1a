"""Other people's trainers, wired to our rewards through their own extension points, never by
editing their files. Each module is thin over :mod:`cac_align.integrations.adapter` (reward
sections by name from the one registry, one model copy per process, invalid policies).

- :mod:`~cac_align.integrations.flow_grpo`: Flow-GRPO (yifan123/flow_grpo); ``install()`` or
  ``python -m cac_align.integrations.flow_grpo``.
- :mod:`~cac_align.integrations.flow_factory`: Flow-Factory (X-GenGroup/Flow-Factory); a reward
  class by dotted path.
- :mod:`~cac_align.integrations.pref_grpo`: Pref-GRPO (CodeGoat24/Pref-GRPO); ``install()`` or
  ``python -m cac_align.integrations.pref_grpo``.
- :mod:`~cac_align.integrations.dance_grpo`: DanceGRPO (XueZeyue/DanceGRPO); VideoAlign's
  inferencer shape, or ``python -m cac_align.integrations.dance_grpo``.
- :mod:`~cac_align.integrations.verl_omni`: verl-omni (verl-project/verl-omni); an async reward
  function by ``pkg://`` path in ``reward.reward_functions``.
- :mod:`~cac_align.integrations.teleboost`: TeleBoost (Tele-AI/TeleBoost); a custom reward
  function by ``pkg://`` path, and our evidence as ViPO's ``pixel_weight_maps``.
- :mod:`~cac_align.integrations.unirl`: UniRL (Tencent-Hunyuan/UniRL); a reward backend class
  by Hydra ``_target_``.
- :mod:`~cac_align.integrations.fastvideo`: FastVideo's DiffusionNFT (hao-ai-lab/FastVideo); a
  ``RewardScorer`` callable for their ``MultiRewardScorer``.
- :mod:`~cac_align.integrations.vllm`: the vLLM plugin that serves our judges' video input.
"""
