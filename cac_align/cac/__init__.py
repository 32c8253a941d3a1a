"""The CaC reward model: schema, prompts, two-turn inference and training stages."""
