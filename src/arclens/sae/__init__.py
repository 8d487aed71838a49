"""Sparse autoencoders and transcoders in JAX (SPEC.md section 5).

``SAE`` is a pytree of SAELens-named weights with a static config; ``encode(sae, x)`` and
``decode(sae, z)`` are pure jittable functions (also ``sae.encode(x)``, ``sae.decode(z)``).
``load`` reads SAELens v6 folders, ours and SAELens's; ``save`` writes them.
"""

from arclens.sae.model import SAE, SAEConfig, decode, encode, new_sae, pre_activations
from arclens.sae.saelens_format import load, save

__all__ = ["SAE", "SAEConfig", "decode", "encode", "load", "new_sae", "pre_activations", "save"]
