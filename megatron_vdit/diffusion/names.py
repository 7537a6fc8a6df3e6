"""Names of the diffusion objectives, noise schedules and samplers, with no torch import,
so the command lines can offer them as choices (and refuse others) before torch loads."""

OBJECTIVES = ("ddpm", "v", "flow")
BETA_SCHEDULES = ("linear", "cosine")
SAMPLERS = ("ddpm", "ddim", "euler", "heun")
