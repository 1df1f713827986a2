"""The stage names a per-rate chain reports, in the order it runs them (``sweeps/chain.py``)."""

LATENT_STAGES = [
    "autoencoder",
    "latents/train",
    "latents/valid",
    "latents/test",
    "diffusion",
    "evaluation/diffusion",
    "solver",
    "evaluation/solver",
]
PIXEL_STAGES = ["pixel_solver", "evaluation/pixel_solver"]
