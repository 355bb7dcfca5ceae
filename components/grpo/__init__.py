"""GRPO (Stage 2b): outcome-driven RL of the reasoning model with TRL's GRPOTrainer and the recipe's SID reward."""
