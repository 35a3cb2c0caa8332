"""Group-relative policy optimisation of the model and the schedule (Co-GRPO)."""
