"""SiD2 ("Simpler Diffusion") diffusion core: schedules, weightings, losses, samplers, U-ViT, training."""
