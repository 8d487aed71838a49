"""Edits at capture points (model/edits.py) in the forward pass: exact edge cases, transformers
with a module's output zeroed, token-role filters, composition, traced parameters, bad input."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.reference import hf_logits, rel_err, replacement_hooks, shared_hf

from arclens.errors import UserError
from arclens.model import edits as E
from arclens.model import qwen
from arclens.model.edits import EditContext, PromptRoles, TokenRoles, batch_roles
from arclens.model.hooks import HOOK_KINDS, Hook
from arclens.model.loading import load_model
from arclens.model.qwen import forward_jit

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    _, config, params = load_model(str(tiny_model_dir), jnp.float32)
    return config, params


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(3)
    lengths = np.array([96, 71], np.int32)
    tokens = rng.integers(0, 1000, size=(2, 96)).astype(np.int32)
    tokens[1, 71:] = 0
    return jnp.asarray(tokens), jnp.asarray(lengths)


@pytest.fixture(scope="module")
def arc_sample(tokenizer):
    """A real ARC-AGI-1 training prompt (with its answer) and its roles."""
    from tests.support.arc_tasks import arc_task

    from arclens.prompts import PromptConfig, render_samples

    sample = next(render_samples([arc_task("007bbfb7")], tokenizer, PromptConfig(augment=False, with_answer=True)))
    return sample, PromptRoles.from_sample(sample, answer_start=len(sample.token_ids) - 40)


def test_identity_edit_gives_bit_for_bit_the_clean_logits(model, batch):
    config, params = model
    tokens, lengths = batch
    clean = forward_jit(params, config, tokens, lengths, logits=True)
    cases = [(Hook(1, kind), E.identity()) for kind in HOOK_KINDS]
    cases.append((Hook(2, "mlp_out"), E.identity(where=E.positions(3, 50) | E.answer())))
    for hook, edit in cases:
        out = forward_jit(params, config, tokens, lengths, logits=True, edits={hook: edit})
        assert np.array_equal(np.asarray(out["logits"]), np.asarray(clean["logits"])), (hook, edit)


@pytest.mark.parametrize("hook", ["blocks.0.hook_resid_post", "blocks.1.hook_attn_out", "blocks.2.hook_mlp_out",
                                  "blocks.3.hook_resid_pre"])
def test_zero_edit_equals_transformers_with_that_output_zeroed(model, batch, tiny_model_dir, hook):
    config, params = model
    tokens, lengths = batch
    mask = (np.arange(tokens.shape[1])[None] < np.asarray(lengths)[:, None]).astype(np.int64)
    ours = np.asarray(forward_jit(params, config, tokens, lengths, logits=True, edits={hook: E.zero()})["logits"])
    hf = shared_hf(tiny_model_dir)
    with replacement_hooks(hf, {hook: lambda v, seen: torch.zeros_like(v)}):
        ref = hf_logits(hf, tokens, mask)
    clean = hf_logits(hf, tokens, mask)
    for b, n in enumerate(np.asarray(lengths)):
        assert rel_err(ours[b, :n], ref[b, :n]) <= 1e-4
        assert rel_err(clean[b, :n], ref[b, :n]) > 1e-2  # zeroing the module really changes the model


def test_capture_at_an_edited_hook_reports_the_edit_only_where_the_filter_selects(model, arc_sample):
    config, params = model
    sample, roles = arc_sample
    n = len(sample.token_ids)
    tokens = jnp.asarray(sample.token_ids[None])
    troles = batch_roles([roles], 1, n)
    direction = np.random.default_rng(0).normal(size=config.d_model).astype(np.float32)
    hooks = ("blocks.1.hook_resid_post", "blocks.2.hook_resid_pre", "blocks.1.hook_mlp_out")
    clean = forward_jit(params, config, tokens, hooks=hooks)
    where = E.cells("test_input")
    edited = forward_jit(params, config, tokens, hooks=hooks, roles=troles,
                         edits={"blocks.1.hook_resid_post": E.steer(direction, 3.0, where=where)})
    test_cells = np.asarray(sample.grid) == 2 * len(sample.augmentation.train_order)
    assert 9 <= test_cells.sum() < n // 4
    for name in ("blocks.1.hook_resid_post", "blocks.2.hook_resid_pre"):  # the same tensor
        diff = np.asarray(edited[name] - clean[name])[0]
        np.testing.assert_allclose(diff[test_cells], np.broadcast_to(3.0 * direction, diff[test_cells].shape),
                                   rtol=1e-5, atol=1e-5)
        assert np.array_equal(np.asarray(edited[name])[0, ~test_cells], np.asarray(clean[name])[0, ~test_cells])
    # an earlier hook of the same layer is untouched
    assert np.array_equal(np.asarray(edited["blocks.1.hook_mlp_out"]), np.asarray(clean["blocks.1.hook_mlp_out"]))


def test_resid_mid_edit_replaces_the_residual_stream(model, batch):
    """TransformerLens's meaning: the MLP reads the edited value and adds to it."""
    config, params = model
    tokens, lengths = batch
    values = np.random.default_rng(1).normal(size=config.d_model).astype(np.float32)
    out = forward_jit(params, config, tokens, lengths, hooks=("blocks.1.hook_resid_mid", "blocks.1.hook_resid_post"),
                      edits={"blocks.1.hook_resid_mid": E.mean(values)})
    layer = params.layers[1]
    mid = jnp.broadcast_to(jnp.asarray(values), out["blocks.1.hook_resid_mid"].shape)
    want = mid + qwen.mlp(layer, qwen.rms_norm(mid, layer.post_norm, config.rms_norm_eps))
    np.testing.assert_array_equal(np.asarray(out["blocks.1.hook_resid_mid"]), np.asarray(mid))
    np.testing.assert_allclose(np.asarray(out["blocks.1.hook_resid_post"]), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_edits_compose_in_model_order_with_captures_and_logits(model, batch):
    config, params = model
    tokens, lengths = batch
    a, b = np.eye(config.d_model, dtype=np.float32)[:2]
    clean = forward_jit(params, config, tokens, lengths, hooks=("blocks.1.hook_resid_pre",), logits=True)
    out = forward_jit(params, config, tokens, lengths, hooks=("blocks.1.hook_resid_pre",), logits=True,
                      edits={"blocks.0.hook_resid_post": E.steer(a, 2.0), "blocks.1.hook_resid_pre": E.steer(b, -1.0)})
    diff = np.asarray(out["blocks.1.hook_resid_pre"] - clean["blocks.1.hook_resid_pre"])
    np.testing.assert_allclose(diff, np.broadcast_to(2.0 * a - b, diff.shape), atol=1e-5)
    assert not np.allclose(np.asarray(out["logits"]), np.asarray(clean["logits"]))


def test_only_the_layers_the_outputs_need_run(model, batch):
    """An edit deeper than every requested output cannot change it; with logits it applies."""
    config, params = model
    tokens, lengths = batch
    edits = {"blocks.3.hook_mlp_out": E.zero()}
    clean = forward_jit(params, config, tokens, lengths, hooks=("blocks.1.hook_resid_post",), logits=True)
    shallow = forward_jit(params, config, tokens, lengths, hooks=("blocks.1.hook_resid_post",), edits=edits)
    assert set(shallow) == {"blocks.1.hook_resid_post"}
    assert np.array_equal(np.asarray(shallow["blocks.1.hook_resid_post"]),
                          np.asarray(clean["blocks.1.hook_resid_post"]))
    deep = forward_jit(params, config, tokens, lengths, logits=True, edits=edits)
    assert rel_err(deep["logits"], clean["logits"]) > 1e-3


def test_edit_parameters_are_traced_one_program_serves_any_values(model, batch):
    config, params = model
    tokens, lengths = batch
    rng = np.random.default_rng(2)
    where = E.cells("answer") | E.positions(10, 20)
    roles = batch_roles([None, None], *tokens.shape)

    def run(direction, alpha):
        return forward_jit(params, config, tokens, lengths, logits=True, roles=roles,
                           edits={"blocks.2.hook_attn_out": E.steer(direction, alpha, where=where)})

    first = run(rng.normal(size=config.d_model), 1.0)["logits"]
    size = qwen._forward_jit._cache_size()
    second = run(rng.normal(size=config.d_model), 5.0)["logits"]
    assert qwen._forward_jit._cache_size() == size  # new direction and alpha: no new compile
    assert not np.allclose(np.asarray(first), np.asarray(second))
    run(rng.normal(size=config.d_model), 1.0)
    forward_jit(params, config, tokens, lengths, logits=True, roles=roles,
                edits={"blocks.2.hook_attn_out": E.steer(np.ones(config.d_model), 1.0, where=E.answer())})
    assert qwen._forward_jit._cache_size() == size + 1  # another filter is another program


def test_bad_edits(model, batch):
    config, params = model
    tokens, lengths = batch
    with pytest.raises(UserError, match="blocks.9.hook_resid_post.*4-layer"):
        forward_jit(params, config, tokens, lengths, edits={"blocks.9.hook_resid_post": E.zero()})
    with pytest.raises(UserError, match="not a hook"):
        forward_jit(params, config, tokens, lengths, edits={"blocks.1.hook_z": E.zero()})
    with pytest.raises(TypeError, match="Edit"):
        forward_jit(params, config, tokens, lengths, edits={"blocks.1.hook_mlp_out": lambda x: x})
    late = E.Edit(None, lambda p, x, ctx: ctx.reads["blocks.2.hook_resid_pre"], reads=("blocks.2.hook_resid_pre",))
    with pytest.raises(UserError, match="computes after it"):
        forward_jit(params, config, tokens, lengths, edits={"blocks.1.hook_mlp_out": late})
    wrong = E.Edit(None, lambda p, x, ctx: x[..., :3])
    with pytest.raises(ValueError, match="returned shape"):
        forward_jit(params, config, tokens, lengths, logits=True, edits={"blocks.1.hook_mlp_out": wrong})
    with pytest.raises(UserError, match="cells"):
        E.cells("test_output")


def test_an_edit_reads_earlier_hooks_as_computed(model, batch):
    """``reads``: the value of an earlier hook (edited, if it was) in the same pass."""
    config, params = model
    tokens, lengths = batch
    copy = E.Edit(None, lambda p, x, ctx: ctx.reads["blocks.1.hook_resid_pre"], reads=("blocks.1.hook_resid_pre",))
    out = forward_jit(params, config, tokens, lengths, hooks=("blocks.1.hook_resid_pre", "blocks.2.hook_mlp_out"),
                      edits={"blocks.1.hook_resid_pre": E.steer(np.ones(config.d_model), 1.0),
                             "blocks.2.hook_mlp_out": copy})
    assert np.array_equal(np.asarray(out["blocks.2.hook_mlp_out"]), np.asarray(out["blocks.1.hook_resid_pre"]))


# --- token filters against a numpy oracle -----------------------------------------------------

FILTERS = [
    (E.everywhere(), lambda g, r, c, n, a, p: np.ones_like(g, bool)),
    (E.answer(), lambda g, r, c, n, a, p: p >= a[:, None]),
    (E.cells(), lambda g, r, c, n, a, p: g >= 0),
    (E.cells("train_input"), lambda g, r, c, n, a, p: (g >= 0) & (g < 2 * n[:, None]) & (g % 2 == 0)),
    (E.cells("train_output"), lambda g, r, c, n, a, p: (g >= 0) & (g < 2 * n[:, None]) & (g % 2 == 1)),
    (E.cells("test_input"), lambda g, r, c, n, a, p: g == 2 * n[:, None]),
    (E.cells("answer", row=1), lambda g, r, c, n, a, p: (g == 2 * n[:, None] + 1) & (r == 1)),
    (E.cells(3, col=0), lambda g, r, c, n, a, p: (g == 3) & (c == 0)),
    (E.positions(2, 7), lambda g, r, c, n, a, p: (p >= 2) & (p < 7)),
    (E.cells("test_input") | E.answer(), lambda g, r, c, n, a, p: (g == 2 * n[:, None]) | (p >= a[:, None])),
    (~E.cells() & E.positions(4), lambda g, r, c, n, a, p: (g < 0) & (p >= 4)),
]


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_token_filters_select_what_their_definition_says(data):
    b, t = 3, 12  # one shape: the filters' jnp ops compile once
    grid = np.array(data.draw(st.lists(st.lists(st.integers(-1, 9), min_size=t, max_size=t), min_size=b,
                                       max_size=b)), np.int32)
    row = np.where(grid >= 0, np.array(data.draw(st.lists(st.lists(st.integers(0, 3), min_size=t, max_size=t),
                                                          min_size=b, max_size=b))), -1).astype(np.int32)
    col = np.where(grid >= 0, (row + 1) % 3, -1).astype(np.int32)
    n_train = np.array(data.draw(st.lists(st.integers(0, 4), min_size=b, max_size=b)), np.int32)
    answer_start = np.array(data.draw(st.lists(st.integers(0, t + 1), min_size=b, max_size=b)), np.int32)
    pos = np.broadcast_to(np.arange(t, dtype=np.int32), (b, t))
    ctx = EditContext(jnp.asarray(pos), TokenRoles(*map(jnp.asarray, (grid, row, col, n_train, answer_start))), {},
                      Hook(0, "resid_post"))
    for where, oracle in FILTERS:
        np.testing.assert_array_equal(np.asarray(where.mask(ctx)), oracle(grid, row, col, n_train, answer_start, pos),
                                      err_msg=repr(where))
