"""A trained state -> the SAE users load: SAELens's layout, raw-activation units (SPEC.md section 5).

The run trained on scaled activations, ``x' = c_in x`` and ``y' = c_out y`` (recipe: E||x'||^2 =
d). The exported SAE takes raw activations and returns raw reconstructions, with the latents in
the target's raw units (``z = z' / c_out``), so unit decoder rows stay unit rows:

    W_enc = (c_in / c_out) W_enc'^T     b_enc = b_enc' / c_out      threshold = threshold' / c_out
    W_dec = W_dec'                      b_dec = b_dec' / c_out

For an SAE ``c_in == c_out == c``, and ``b_dec`` (subtracted from the input and added to the
output) is ``b_dec' / c`` for both uses. TopK's selection is unchanged by a positive rescaling of
its pre-activations, and a JumpReLU's gate ``pre > threshold`` too, so the exported SAE computes
exactly ``decode(encode(x)) = decode'(encode'(c x)) / c``.

BatchTopK is exported as a JumpReLU with its learned global threshold (as SAELens does).
A TopK transcoder has no class of its own in SAELens 6.54.12; as all arclens hooks have the same
width, it is exported as SAELens's ``topk`` with ``apply_b_dec_to_input: false`` and
``metadata.hook_name_out``: SAELens's TopKSAE then computes exactly the transcoder's ``encode``
and ``decode`` (saelens_format.py; docs/SAE.md).
"""

from __future__ import annotations

import numpy as np

from arclens.sae.model import SAE, SAEConfig, new_sae
from arclens.sae.recipe import SAESpec
from arclens.sae.train_state import SAEState, StepConfig, batchtopk_threshold

INFERENCE_ARCH = {"topk": "topk", "batchtopk": "jumprelu", "jumprelu": "jumprelu", "relu": "standard"}


def to_inference(cfg: StepConfig, spec: SAESpec, state: SAEState, *, model_name: str | None = None,
                 metadata: dict | None = None) -> SAE:
    import json

    p = state.params
    c_in = float(np.asarray(state.scale_in))
    c_out = float(np.asarray(state.scale_out))
    W_enc = np.asarray(p.W_enc, np.float32).T * np.float32(c_in / c_out)
    b_enc = np.asarray(p.b_enc, np.float32) / np.float32(c_out)
    W_dec = np.asarray(p.W_dec, np.float32)
    b_dec = np.asarray(p.b_dec, np.float32) / np.float32(c_out)
    threshold = None
    if spec.arch == "jumprelu":
        threshold = np.asarray(p.threshold, np.float32) / np.float32(c_out)
    elif spec.arch == "batchtopk":
        value = float(np.asarray(batchtopk_threshold(state.trackers))) / c_out
        threshold = np.full((spec.d_sae,), value, np.float32)
    icfg = SAEConfig(
        architecture=INFERENCE_ARCH[spec.arch], d_in=spec.d_in, d_sae=spec.d_sae, d_out=spec.d_out,
        k=spec.k if spec.arch == "topk" else None, apply_b_dec_to_input=cfg.arch.apply_b_dec_to_input,
        dtype="float32", hook_name=spec.hook_in, hook_name_out=spec.hook_out, model_name=model_name,
        metadata_json=json.dumps(metadata or {}, sort_keys=True),
    )
    return new_sae(icfg, W_enc, b_enc, W_dec, b_dec, threshold=threshold)
