"""SAE edits for the model's edit points (model/edits.py): splice an SAE in, ablate or steer latents.

Each returns an ``arclens.model.edits.Edit`` whose params are the SAE itself (a pytree of its
weights), so one compiled program serves any SAE of a shape. Put it at the SAE's output hook::

    forward(params, config, tokens, lengths, logits=True, edits={sae.cfg.output_hook: splice(sae)})

``output_hook`` is the SAE's ``hook_name``, or a transcoder's ``hook_name_out``: a transcoder
reads its input hook (declared in the edit's ``reads``, computed earlier in the same pass) and
replaces its output hook with its prediction.

The error term: with ``keep_error=True`` the edit adds the SAE's reconstruction error
``x - sae(x)`` back, so the edited model equals the clean one up to floating point, and an
ablation or steering changes the activation by exactly the ablated latents' decoder
contributions. ``splice`` defaults to ``keep_error=False`` (the SAE replaces the activation, the
standard spliced-in test); ``ablate`` defaults to ``keep_error=True`` (the change is the latents'
own, not the SAE's reconstruction error).
"""

from __future__ import annotations

from collections.abc import Iterable

import jax.numpy as jnp
import numpy as np

from arclens.errors import UserError
from arclens.model.edits import EVERYWHERE, Edit, Where, steer
from arclens.model.hooks import HOOK_KINDS, parse_hook
from arclens.sae.model import SAE, decode, encode


def _source(sae: SAE, x, ctx):
    """What the SAE encodes: the edited activation itself, or a transcoder's input hook."""
    return ctx.reads[sae.cfg.hook_name] if sae.cfg.is_transcoder else x


def _splice(sae: SAE, x, ctx):
    return decode(sae, encode(sae, _source(sae, x, ctx)))


def _splice_keep_error(sae: SAE, x, ctx):
    x_hat = _splice(sae, x, ctx)
    return x_hat + (x.astype(x_hat.dtype) - x_hat)


def _ablate(params, x, ctx):
    sae, keep = params
    z = encode(sae, _source(sae, x, ctx))
    return decode(sae, z * keep.astype(z.dtype))


def _ablate_keep_error(params, x, ctx):
    # x minus the ablated latents' decoder contributions: decode(z_removed) - b_dec is exactly the
    # part of decode(z) that those latents make (decode is linear in z).
    sae, keep = params
    z = encode(sae, _source(sae, x, ctx))
    removed = decode(sae, z * (1 - keep.astype(z.dtype))) - sae.b_dec
    return x.astype(removed.dtype) - removed


def _reads(sae: SAE) -> tuple[str, ...]:
    return (sae.cfg.hook_name,) if sae.cfg.is_transcoder else ()


def splice(sae: SAE, keep_error: bool = False, where: Where = EVERYWHERE) -> Edit:
    """The activation replaced by the SAE's reconstruction (a transcoder's prediction), or with
    ``keep_error`` the reconstruction plus its error (the clean value, up to floating point)."""
    _check_hooks(sae)
    fn = _splice_keep_error if keep_error else _splice
    return Edit(sae, fn, where, _reads(sae), name="splice(keep_error)" if keep_error else "splice",
                hook=sae.cfg.output_hook)


def ablate(sae: SAE, latents: Iterable[int], keep_error: bool = True, where: Where = EVERYWHERE) -> Edit:
    """Latents set to zero in the SAE's code. With ``keep_error`` (default) the activation loses
    exactly those latents' decoder contributions and nothing else; without, it is the SAE's
    reconstruction from the other latents."""
    _check_hooks(sae)
    idx = check_latents(sae, latents)
    keep = np.ones(sae.cfg.d_sae, np.float32)
    keep[idx] = 0.0
    fn = _ablate_keep_error if keep_error else _ablate
    return Edit((sae, jnp.asarray(keep)), fn, where, _reads(sae), name="ablate", hook=sae.cfg.output_hook)


def latent_direction(sae: SAE, latent: int) -> jnp.ndarray:
    """What one unit of the latent adds to the SAE's output: its decoder row (divided by the row's
    norm when the SAE rescales activations by it, as its decode does)."""
    (i,) = check_latents(sae, [latent])
    row = sae.W_dec[i]
    if sae.cfg.rescale_acts_by_decoder_norm:
        row = row / jnp.linalg.norm(row)
    return row


def steer_latent(sae: SAE, latent: int, alpha: float, where: Where = EVERYWHERE) -> Edit:
    """``steer`` along a latent's decoder direction: ``x + alpha * latent_direction`` at the SAE's
    output hook (alpha in units of the latent's activation)."""
    return steer(latent_direction(sae, latent), alpha, where=where)


def check_latents(sae: SAE, latents: Iterable[int]) -> list[int]:
    """The latent indices as ints, each in ``[0, d_sae)`` (UserError naming the first that is not)."""
    out = []
    for latent in latents:
        if isinstance(latent, str) and latent.strip().lstrip("-").isdigit():
            latent = int(latent)
        if isinstance(latent, bool) or not isinstance(latent, int | np.integer):
            raise UserError(f"latent {latent!r}: expected an integer index")
        i = int(latent)
        if not 0 <= i < sae.cfg.d_sae:
            raise UserError(f"latent {latent}: out of range for an SAE of {sae.cfg.d_sae} latents "
                            f"(0..{sae.cfg.d_sae - 1})")
        out.append(i)
    if not out:
        raise UserError("no latents given (expected at least one latent index)")
    return out


def _check_hooks(sae: SAE) -> None:
    if sae.cfg.hook_name is None:
        raise UserError("the SAE's cfg.json names no hook (metadata.hook_name); arclens needs it to know "
                        "where the SAE reads")
    if sae.cfg.is_transcoder and sae.cfg.hook_name_out is None:
        raise UserError("the transcoder's cfg.json names no output hook (metadata.hook_name_out)")


def check_sae_for_model(sae: SAE, config, where: str = "--sae") -> None:
    """UserError unless the SAE fits this model (``QwenConfig``): its hooks exist in it, the input
    hook comes before a transcoder's output hook, and d_in (d_out) equals the model's width."""
    _check_hooks(sae)
    names = [sae.cfg.hook_name] + ([sae.cfg.hook_name_out] if sae.cfg.is_transcoder else [])
    hooks = []
    for name in names:
        try:
            hooks.append(parse_hook(name, config.n_layers))
        except UserError:
            raise UserError(f"{where}: the SAE's hook {name!r} is not a hook of this {config.n_layers}-layer model "
                            f"(expected blocks.L.hook_KIND, L in 0..{config.n_layers - 1})") from None
    if len(hooks) == 2 and (hooks[0].layer, HOOK_KINDS.index(hooks[0].kind)) >= (
            hooks[1].layer, HOOK_KINDS.index(hooks[1].kind)):
        raise UserError(f"{where}: the transcoder reads {names[0]} and writes {names[1]}, which the model "
                        "computes first; its input hook must come before its output hook")
    for what, width in (("d_in", sae.cfg.d_in), ("d_out", sae.cfg.d_out)):
        if width != config.d_model:
            raise UserError(f"{where}: the SAE's {what} is {width}, but the model's activations at "
                            f"{names[-1] if what == 'd_out' else names[0]} have {config.d_model} dimensions "
                            "(an SAE trained on another model?)")
