"""Capture-point names, as TransformerLens names them (SPEC.md section 1).

The model never decides what to keep: the caller passes hook names, and the forward pass returns
exactly those.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from arclens.errors import UserError

HOOK_KINDS = ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post")
# The seed documents' words for the same capture points.
ACTIVATION_ALIASES = {"residual": "resid_post", "mlp": "mlp_out", "attn": "attn_out"}

_HOOK_RE = re.compile(r"^blocks\.(\d+)\.hook_([a-z_]+)$")


@dataclass(frozen=True, order=True)
class Hook:
    layer: int
    kind: str

    @property
    def name(self) -> str:
        return f"blocks.{self.layer}.hook_{self.kind}"

    def __str__(self) -> str:
        return self.name


def parse_hook(name: str, n_layers: int | None = None) -> Hook:
    """Parse ``blocks.L.hook_KIND``; with ``n_layers`` also check that L is in range."""
    m = _HOOK_RE.match(name)
    if not m or m.group(2) not in HOOK_KINDS:
        raise UserError(
            f"--hooks: {name!r} is not a hook name; expected blocks.L.hook_KIND with KIND one of "
            + ", ".join(HOOK_KINDS)
        )
    hook = Hook(int(m.group(1)), m.group(2))
    if n_layers is not None and not 0 <= hook.layer < n_layers:
        raise UserError(f"--hooks: {name!r} names layer {hook.layer}, but the model has layers 0..{n_layers - 1}")
    return hook


def parse_hooks(names, n_layers: int | None = None) -> tuple[Hook, ...]:
    """Parse, de-duplicate and sort (by layer, then by position inside the layer)."""
    hooks = {parse_hook(n, n_layers) for n in names}
    return tuple(sorted(hooks, key=lambda h: (h.layer, HOOK_KINDS.index(h.kind))))


def hooks_from_layers(layers, activations, n_layers: int | None = None) -> tuple[Hook, ...]:
    """The seed documents' ``--layers 6 12 --activation residual mlp`` form."""
    names = []
    for act in activations:
        if act not in ACTIVATION_ALIASES:
            raise UserError(f"--activation: {act!r} is not one of {', '.join(ACTIVATION_ALIASES)}")
        names += [f"blocks.{int(layer)}.hook_{ACTIVATION_ALIASES[act]}" for layer in layers]
    return parse_hooks(names, n_layers)
