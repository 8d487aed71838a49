"""``arclens infer --hooks``: the hooks at every generated token, as an activation store.

``OUT/activations`` is a store of SPEC.md section 3 (``positions`` = ``"generated"``), written by
the same StoreWriter as extract's, resumed by its committed keys, and committed before the
window's predictions are appended (so a task in predictions.jsonl has its activations stored).
With edits (``--splice/--ablate/--steer``) the store's metadata has the run's ``edits`` records:
its activations are the edited model's.
"""

from __future__ import annotations

import numpy as np

ACTIVATIONS = "activations"


class GeneratedActivations:
    """``--hooks``: the hooks at every generated token into ``DIR/activations`` (SPEC section 3).

    Token k of a sample's output was produced at position ``prompt_len - 1 + k``; that row holds
    the activations there and, as every row of an extract store, the token at that position: the
    token fed there (``token_id``: the last prompt token, then output token k - 1) and its grid
    role. Row 0 has the prompt's last token's role (from the prompt, as extract stores it); row
    k >= 1 has output token k - 1's role in the answer (``prompts.output_token_roles``: the
    decoded output read by the encoder as ``parse_grid`` reads it, cells numbered as the answer
    grid of a training prompt, ragged or cut-short answers included, -1 for anything that is not
    one cell). So the row whose ``token_id`` is cell (r, c) holds the state while the model reads
    that cell and writes the token after it; the state that wrote the cell is the row before."""

    def __init__(self, s, tokenizer, encoder):  # s: infer.InferSettings
        from arclens.prompts.templates import get_prompt_version
        from arclens.store.writer import StoreWriter, committed_keys, open_or_create_store

        self.dest = str(s.out / ACTIVATIONS)
        self.tokenizer, self.encoder = tokenizer, encoder
        self.version = get_prompt_version(s.prompt.version)
        from arclens.model.loading import is_random_checkpoint
        from arclens.store.format import writer_name
        from arclens.store.metadata import model_section, tasks_section

        meta = {
            "model": model_section(s.model, s.config.to_json(), s.dtype, fingerprint=s.model_fingerprint,
                                   random_weights=is_random_checkpoint(s.model_path)),
            "hooks": [h.name for h in s.hooks],
            "dtype": s.dtype,
            "d_model": s.config.hidden_size,
            "positions": "generated",
            "prompt": s.prompt.to_json(),
            "tasks": tasks_section(s.tasks_source, s.tasks, s.prompt.with_answer),
            "generation": {"max_new_tokens": s.max_new_tokens, "decoding": "greedy"},
        }
        if s.edits:  # the activations are the edited model's (a capture at an edited hook: the edited value)
            meta["edits"] = [e.record for e in s.edits]
        open_or_create_store(self.dest, meta)
        self.committed = committed_keys(self.dest)
        self.writer = StoreWriter(self.dest, writer=writer_name(role="infer"))

    def roles(self, sample, gen) -> dict[str, np.ndarray]:
        """``grid``/``row``/``col`` int16 of each stored row: the role of the token fed there."""
        from arclens.prompts import output_token_roles
        from arclens.prompts.chat import answer_grid_number

        n_prompt = len(sample.token_ids)
        number = answer_grid_number(self.version, len(sample.augmentation.train_order))
        generated = output_token_roles(self.tokenizer, gen.token_ids, self.encoder, number)
        return {
            col: np.concatenate([getattr(sample, col)[n_prompt - 1 :], out[:-1]]).astype(np.int16)
            for col, out in zip(("grid", "row", "col"), generated)
        }

    def add(self, sample, gen) -> None:
        if sample.key in self.committed:
            return  # committed by an earlier run that stopped before writing its predictions
        n_prompt = len(sample.token_ids)
        fed = np.concatenate([sample.token_ids[-1:], gen.token_ids[:-1]]).astype(np.int32)
        arrays = {**gen.captures, "position": gen.positions, "token_id": fed, **self.roles(sample, gen)}
        meta = {
            "key": sample.key,
            "task_id": sample.task_id,
            "test_index": sample.test_index,
            "augmentation": sample.augmentation.to_json(),
            "prompt_tokens": n_prompt,
        }
        self.writer.add(meta, arrays)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
