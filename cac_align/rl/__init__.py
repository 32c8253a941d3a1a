"""The RL math, one pure function per equation, importing nothing above the ground floor.

- :mod:`cac_align.rl.advantages`: group advantages (and GDPO's per-component ``normalize_then_sum``)
  and PPO's clipped surrogate, shared by Flow-GRPO (``cac-align flow-grpo``) and CaC's stage-3 GRPO;
- :mod:`cac_align.rl.sde`: Flow-GRPO's SDE step, its log-probability and loss;
- :mod:`cac_align.rl.nft`: DiffusionNFT's loss and its old-policy decay;
- :mod:`cac_align.rl.dpo`: Diffusion-DPO's loss, localized by a mask;
- :mod:`cac_align.rl.trust_region`: DPPO's trust region on the SDE steps (the exact KL or TV between
  the old and the current Gaussian step, and the policy gradient masked by it);
- :mod:`cac_align.rl.gardo`: GARDO's guards against reward hacking (the KL gated to the samples the
  auxiliary judges disagree on, when the reference resets, diversity-aware advantages);
- :mod:`cac_align.rl.credit`: a reward's evidence (window, boxes) as a credit map on the latent
  grid, and the localized policy losses that read it.

Jobs, generator families and integrations import these; these import none of them
(``tests/test_import_graph.py`` holds it).
"""
