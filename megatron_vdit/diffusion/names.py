"""Names of the diffusion objectives and noise schedules, with no torch import, so the
job config (`training/config.py`) can offer them as choices before torch is loaded."""

OBJECTIVES = ("ddpm", "v", "flow")
BETA_SCHEDULES = ("linear", "cosine")
