"""The masked-token sampler, its schedules and the trajectory records."""
