"""What an SAE's latents mean on ARC: per-latent statistics by grid role (`arclens features`).

The files it writes (an FDIR) are specified in docs/FEATURES.md; the dashboard
(`features/dashboard/`) and the figures (`features/figures.py`) read them. This package is the
top layer: it may import `sae`, `store`, `model`, `prompts` and `pipeline`.
"""
