"""Edits: replace the activation at a capture point inside the jitted forward pass (SPEC.md section 6).

The model stays plain. The caller names edit points as it names capture points::

    forward(params, config, tokens, lengths, logits=True,
            edits={"blocks.3.hook_resid_post": steer(direction, 4.0, where=cells("test_input"))},
            roles=roles)

An ``Edit`` is a pure function ``fn(params, x, ctx) -> replacement`` plus its own ``params``, a
pytree. ``Edit`` is itself a pytree whose leaves are those params and whose static part is the
function, the token filter ``where`` and the hooks it ``reads``: under ``jax.jit`` the params are
traced arguments, so one compiled program serves any weights (any SAE of a shape, any steering
direction or strength, any set of ablated latents), and only another function, filter or hook
compiles again.

- ``x`` is the activation ``[B, T, D]`` at the hook as the model computed it, in the compute dtype.
- ``ctx`` (``EditContext``) carries the batch's token ``positions`` ``[B, T]``, its ARC token
  ``roles`` (``TokenRoles``: grid/row/col per token as SPEC.md section 3 numbers them, the number
  of train examples shown and where the assistant's reply starts) and ``reads``: the values of the
  other hooks the edit declared in ``reads`` (a transcoder reads its input hook and writes its
  output hook), as the forward pass computed them (edited, if they were).
- The replacement must have ``x``'s shape; it is cast to ``x``'s dtype. Only tokens that ``where``
  selects take it; the others keep ``x`` (``everywhere()``, the default, skips the select).
- The replacement flows on: every later computation, a capture at the edited hook, the logits and
  the keys and values a KV cache stores all see the edited value.

Hooks are applied in the model's order (layer, then resid_pre, attn_out, resid_mid, mlp_out,
resid_post), so ``resid_post`` of layer L and ``resid_pre`` of layer L+1, the same tensor, can
both be edited, the second on top of the first. ``resid_mid`` edits the residual stream itself
(TransformerLens's meaning), not only the input of the MLP's norm.

Token roles in generation (model/generate.py): a generated token is part of the answer
(``answer()`` selects it: its position is past ``answer_start``) and is not a known grid cell
(grid/row/col -1: the cells of generated text are known only once it is parsed, after
generation). Prompt tokens keep the roles of their prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from arclens.errors import UserError
from arclens.model.hooks import HOOK_KINDS, Hook, parse_hook

_STATIC = {"static": True}

# ---------------------------------------------------------------------------------------------
# Token roles


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class TokenRoles:
    """ARC roles of a batch's tokens, on the device. Grid numbers follow SPEC.md section 3 (example
    i input = 2i, output = 2i+1, test input = 2n, answer = 2n+1, -1 for a token that is not one
    cell of a grid)."""

    grid: jax.Array  # int32 [B, T]
    row: jax.Array  # int32 [B, T]
    col: jax.Array  # int32 [B, T]
    n_train: jax.Array  # int32 [B]: train examples the prompt shows (n above)
    answer_start: jax.Array  # int32 [B]: position of the first token of the assistant's reply


@dataclass(frozen=True)
class PromptRoles:
    """One prompt's roles on the host (from ``prompts.Sample``: ``grid``, ``row``, ``col``, the
    length of ``augmentation.train_order``, and the reply's first token)."""

    grid: np.ndarray  # int [n]
    row: np.ndarray
    col: np.ndarray
    n_train: int
    answer_start: int  # len(prompt) for an inference prompt whose reply is generated

    @classmethod
    def from_sample(cls, sample, answer_start: int | None = None) -> PromptRoles:
        """From a ``prompts.Sample``; ``answer_start`` defaults to its length (an inference
        prompt: the answer is what the model generates)."""
        n = len(sample.token_ids)
        return cls(np.asarray(sample.grid), np.asarray(sample.row), np.asarray(sample.col),
                   len(sample.augmentation.train_order), n if answer_start is None else int(answer_start))


def batch_roles(roles: Sequence[PromptRoles | None], batch: int, seq_len: int) -> TokenRoles:
    """Right-padded ``TokenRoles`` ``[batch, seq_len]`` for these prompts (rows past ``len(roles)``
    and ``None`` entries have no cells and no answer: answer_start = seq_len)."""
    grid = np.full((batch, seq_len), -1, np.int32)
    row, col = grid.copy(), grid.copy()
    n_train = np.zeros(batch, np.int32)
    answer_start = np.full(batch, seq_len, np.int32)
    for r, pr in enumerate(roles):
        if pr is None:
            continue
        n = len(pr.grid)
        grid[r, :n], row[r, :n], col[r, :n] = pr.grid, pr.row, pr.col
        n_train[r], answer_start[r] = pr.n_train, pr.answer_start
    return TokenRoles(*(jnp.asarray(a) for a in (grid, row, col, n_train, answer_start)))


def no_roles(batch: int, seq_len: int, answer_start) -> TokenRoles:
    """Roles for a batch the caller said nothing about: no cells, the answer starts at
    ``answer_start`` (``[B]``; forward uses the lengths, so no given token is the answer)."""
    off = jnp.full((batch, seq_len), -1, jnp.int32)
    return TokenRoles(off, off, off, jnp.zeros(batch, jnp.int32), jnp.asarray(answer_start, jnp.int32))


@dataclass(frozen=True)
class EditContext:
    positions: jax.Array  # int32 [B, T]: absolute position of each token in its sequence
    roles: TokenRoles
    reads: Mapping[str, jax.Array]  # hook name -> [B, T, D] for the hooks the edit declared
    hook: Hook  # the hook being edited


# ---------------------------------------------------------------------------------------------
# Token filters (``where``): static, hashable, combinable with & | ~


class Where:
    """Selects tokens: ``mask(ctx) -> bool [B, T]``. Combine with ``&``, ``|`` and ``~``."""

    def mask(self, ctx: EditContext) -> jax.Array:
        raise NotImplementedError

    def __and__(self, other: Where) -> Where:
        return _And(self, other)

    def __or__(self, other: Where) -> Where:
        return _Or(self, other)

    def __invert__(self) -> Where:
        return _Not(self)


@dataclass(frozen=True)
class _Everywhere(Where):
    def mask(self, ctx):
        return jnp.ones(ctx.positions.shape, bool)

    def __repr__(self):
        return "everywhere()"


@dataclass(frozen=True)
class _Answer(Where):
    def mask(self, ctx):
        return ctx.positions >= ctx.roles.answer_start[:, None]

    def __repr__(self):
        return "answer()"


GRID_KINDS = ("train_input", "train_output", "test_input", "answer")


@dataclass(frozen=True)
class _Cells(Where):
    grid: str | int | None = None
    row: int | None = None
    col: int | None = None

    def mask(self, ctx):
        r = ctx.roles
        m = r.grid >= 0
        n2 = 2 * r.n_train[:, None]
        if isinstance(self.grid, int):
            m &= r.grid == self.grid
        elif self.grid == "train_input":
            m &= (r.grid < n2) & (r.grid % 2 == 0)
        elif self.grid == "train_output":
            m &= (r.grid < n2) & (r.grid % 2 == 1)
        elif self.grid == "test_input":
            m &= r.grid == n2
        elif self.grid == "answer":
            m &= r.grid == n2 + 1
        if self.row is not None:
            m &= r.row == self.row
        if self.col is not None:
            m &= r.col == self.col
        return m


@dataclass(frozen=True)
class _Positions(Where):
    start: int = 0
    stop: int | None = None

    def mask(self, ctx):
        m = ctx.positions >= self.start
        return m if self.stop is None else m & (ctx.positions < self.stop)


@dataclass(frozen=True)
class _And(Where):
    a: Where
    b: Where

    def mask(self, ctx):
        return self.a.mask(ctx) & self.b.mask(ctx)


@dataclass(frozen=True)
class _Or(Where):
    a: Where
    b: Where

    def mask(self, ctx):
        return self.a.mask(ctx) | self.b.mask(ctx)


@dataclass(frozen=True)
class _Not(Where):
    a: Where

    def mask(self, ctx):
        return ~self.a.mask(ctx)


EVERYWHERE: Where = _Everywhere()


def everywhere() -> Where:
    return EVERYWHERE


def answer() -> Where:
    """The assistant's reply: tokens at or after ``roles.answer_start``, generated tokens included."""
    return _Answer()


def cells(grid: str | int | None = None, row: int | None = None, col: int | None = None) -> Where:
    """Grid-cell tokens: of any grid (``None``), of one kind (``"train_input"``, ``"train_output"``,
    ``"test_input"``, ``"answer"``) or one grid number; optionally only one row and/or column (as
    the prompt shows it, after augmentation)."""
    if grid is not None and not isinstance(grid, int) and grid not in GRID_KINDS:
        raise UserError(f"cells(grid={grid!r}): expected None, a grid number or one of {', '.join(GRID_KINDS)}")
    return _Cells(grid, row, col)


def positions(start: int = 0, stop: int | None = None) -> Where:
    """Tokens at absolute positions ``start <= p < stop``."""
    return _Positions(int(start), None if stop is None else int(stop))


# ---------------------------------------------------------------------------------------------
# The edit type


EditFn = Callable[[Any, jax.Array, EditContext], jax.Array]


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Edit:
    """``fn(params, x, ctx) -> replacement`` at one hook; ``params`` are traced, the rest static."""

    params: Any
    fn: EditFn = field(metadata=_STATIC)
    where: Where = field(default=_Everywhere(), metadata=_STATIC)
    reads: tuple[str, ...] = field(default=(), metadata=_STATIC)
    name: str = field(default="edit", metadata=_STATIC, compare=False)
    # the one hook it is made for, or None (any): an SAE's splice or ablation encodes the
    # activation it finds, which is only the SAE's input at the SAE's own (output) hook
    hook: str | None = field(default=None, metadata=_STATIC)

    def __repr__(self) -> str:
        return f"{self.name}(where={self.where!r})" if not isinstance(self.where, _Everywhere) else f"{self.name}()"


def _identity(params, x, ctx):
    return x


def _zero(params, x, ctx):
    return jnp.zeros_like(x)


def _constant(values, x, ctx):
    return jnp.broadcast_to(values.astype(x.dtype), x.shape)


def _steer(params, x, ctx):
    direction, alpha = params
    return x + (alpha * direction).astype(x.dtype)


def identity(where: Where = EVERYWHERE) -> Edit:
    """Returns the activation unchanged (a control: the logits stay bit for bit the same)."""
    return Edit(None, _identity, where, name="identity")


def zero(where: Where = EVERYWHERE) -> Edit:
    """Zero ablation: the hook's output replaced by zeros (as if the module's output were 0)."""
    return Edit(None, _zero, where, name="zero")


def mean(values, where: Where = EVERYWHERE) -> Edit:
    """Mean ablation: the activation replaced by ``values`` (``[D]``, or anything that broadcasts
    to ``[B, T, D]``), e.g. its mean over a data set."""
    return Edit(jnp.asarray(values), _constant, where, name="mean")


def steer(direction, alpha, where: Where = EVERYWHERE) -> Edit:
    """``x + alpha * direction`` on the tokens ``where`` selects (``direction``: ``[D]``; both
    traced, so other directions and strengths reuse the compiled program)."""
    return Edit((jnp.asarray(direction), jnp.asarray(alpha, jnp.float32)), _steer, where, name="steer")


# ---------------------------------------------------------------------------------------------
# Applying edits inside the forward pass (qwen.forward and generate's decode step)


def _order(hook: Hook) -> tuple[int, int]:
    return hook.layer, HOOK_KINDS.index(hook.kind)


def normalize_edits(edits: Mapping | None, n_layers: int) -> dict[str, Edit]:
    """``{hook name: Edit}`` with canonical names, checked against the model (UserError for a hook
    the model has not; TypeError for a value that is not an Edit; UserError for an edit that reads
    a hook computed after the one it edits)."""
    if not edits:
        return {}
    out: dict[str, Edit] = {}
    for key, edit in edits.items():
        name = key.name if isinstance(key, Hook) else str(key)
        try:
            hook = parse_hook(name, n_layers)
        except UserError:
            raise UserError(f"edits: {name!r} is not a hook of this {n_layers}-layer model "
                            f"(expected blocks.L.hook_KIND, KIND one of {', '.join(HOOK_KINDS)})") from None
        if not isinstance(edit, Edit):
            raise TypeError(f"edits[{name!r}]: expected an arclens.model.edits.Edit, got {type(edit).__name__}")
        if edit.hook is not None and _canonical(edit.hook, n_layers) != hook.name:
            raise UserError(f"edits[{name!r}]: this {edit.name} is made for {edit.hook} (its SAE's output hook), "
                            f"not {hook.name}; put it at {edit.hook}")
        for read in edit.reads:
            try:
                source = parse_hook(read, n_layers)
            except UserError:
                raise UserError(f"edits[{name!r}] reads {read!r}, which is not a hook of this "
                                f"{n_layers}-layer model") from None
            if _order(source) >= _order(hook):
                raise UserError(f"edits[{name!r}] reads {read!r}, which the model computes after it "
                                "(an edit can read only earlier hooks)")
        out[hook.name] = edit
    return dict(sorted(out.items()))


def _canonical(name: str, n_layers: int) -> str | None:
    try:
        return parse_hook(name, n_layers).name
    except UserError:
        return None


class EditRunner:
    """Applies a set of edits while one forward pass (or decode step) runs. ``tap(layer)`` is the
    callback ``qwen.decoder_layer`` calls at each hook kind."""

    def __init__(self, edits: Mapping[str, Edit], positions: jax.Array, roles: TokenRoles):
        self.edits = dict(edits)
        self.positions = positions
        self.roles = roles
        self.wanted_reads = {r for e in self.edits.values() for r in e.reads}
        self.seen: dict[str, jax.Array] = {}

    def __bool__(self) -> bool:
        return bool(self.edits)

    def tap(self, layer: int) -> Callable[[str, jax.Array], jax.Array]:
        def apply(kind: str, x: jax.Array) -> jax.Array:
            name = f"blocks.{layer}.hook_{kind}"
            edit = self.edits.get(name)
            if edit is not None:
                x = self._apply(Hook(layer, kind), edit, x)
            if name in self.wanted_reads:
                self.seen[name] = x
            return x

        return apply

    def _apply(self, hook: Hook, edit: Edit, x: jax.Array) -> jax.Array:
        ctx = EditContext(self.positions, self.roles, {r: self.seen[r] for r in edit.reads}, hook)
        new = edit.fn(edit.params, x, ctx)
        if new.shape != x.shape:
            raise ValueError(f"edit {edit!r} at {hook.name} returned shape {new.shape}; the activation is {x.shape}")
        new = new.astype(x.dtype)
        if isinstance(edit.where, _Everywhere):
            return new
        return jnp.where(edit.where.mask(ctx)[..., None], new, x)
