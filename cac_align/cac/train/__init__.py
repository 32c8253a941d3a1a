"""CaC's training: data for the three stages, CoT synthesis, SFT (stages 1–2) and GRPO (stage 3)."""
