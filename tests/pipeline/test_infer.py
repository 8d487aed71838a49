"""`arclens infer` end to end on a tiny random model, resume, capture, and voting by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from arclens.cli import main as cli_main
from arclens.data.loaders import load_tasks
from arclens.data.tasks import Example, Task
from arclens.pipeline.predictions import completed_tasks, read_predictions
from arclens.pipeline.score import score_submission
from arclens.pipeline.submission import EMPTY_ATTEMPT, build_submission

# Three small ARC-AGI-1 evaluation tasks; 6ea4a07e has two test inputs.
TASK_IDS = ("66e6c45b", "6ea4a07e", "be03b35f")
FIELDS = {"key", "task_id", "test_index", "augmentation", "prompt_token_ids", "output_token_ids", "output_text",
          "logprobs", "stop_reason", "grid", "reverted_grid"}


@pytest.fixture(scope="module")
def tasks_file(tmp_path_factory):
    tasks = {t.task_id: t.to_json() for t in load_tasks("arc-agi-1/evaluation") if t.task_id in TASK_IDS}
    for t in tasks.values():  # held back, as on Kaggle; score gets them from the built-in set
        for e in t["test"]:
            e.pop("output")
    path = tmp_path_factory.mktemp("tasks") / "challenges.json"
    path.write_text(json.dumps(tasks))
    return str(path)


HOOKS = ("--hooks", "blocks.1.hook_resid_post", "blocks.3.hook_mlp_out")


def _infer(model, tasks, out, *extra):
    return cli_main(["infer", "--model", str(model), "--tasks", tasks, "--out", str(out), "--predictions-per-task", "2",
                     "--max-new-tokens", "12", "--batch-size", "8", "--dtype", "float32", *extra])


@pytest.fixture(scope="module")
def first_run(tiny_model_dir, tasks_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("infer") / "run"
    assert _infer(tiny_model_dir, tasks_file, out, *HOOKS) == 0
    return out


def test_submission_and_predictions_are_complete(first_run, capsys):
    sub = json.loads((first_run / "submission.json").read_text())
    n_tests = {"66e6c45b": 1, "6ea4a07e": 2, "be03b35f": 1}
    assert set(sub) == set(TASK_IDS)
    for task_id, entries in sub.items():
        assert len(entries) == n_tests[task_id]
        for e in entries:
            assert set(e) == {"attempt_1", "attempt_2"}
            for g in e.values():
                # a grid, or the [] pad of a missing attempt
                assert all(len(r) == len(g[0]) and r and all(0 <= v <= 9 for v in r) for r in g)
    records = read_predictions(first_run / "predictions.jsonl")
    assert len(records) == 2 * sum(n_tests.values())
    assert len({r["key"] for r in records}) == len(records)
    for r in records:
        assert set(r) == FIELDS
        assert len(r["logprobs"]) == len(r["output_token_ids"]) <= 12
        assert all(lp <= 0 for lp in r["logprobs"])
        assert r["stop_reason"] in ("eos", "fence", "length")
        if r["stop_reason"] == "length":
            assert len(r["output_token_ids"]) == 12
        if r["stop_reason"] == "fence":
            assert r["output_text"].count("```") >= 1

    # score runs on it, against the built-in set's outputs
    assert cli_main(["score", "--submission", str(first_run / "submission.json"),
                     "--solutions", "arc-agi-1/evaluation", "--per-task"]) == 0
    out = capsys.readouterr().out
    assert "/ 3 tasks" in out and "397 task(s) of the solutions are not in the submission" in out


def test_generated_token_activations_are_stored(first_run, tokenizer):
    import arclens
    from arclens.prompts import DEFAULT_ENCODER, output_token_roles

    records = {r["key"]: r for r in read_predictions(first_run / "predictions.jsonl")}
    store = arclens.open_store(str(first_run / "activations"))
    assert set(store.hooks) == {"blocks.1.hook_resid_post", "blocks.3.hook_mlp_out"}
    seen = set()
    for sample, arrays in store.samples():
        r = records[sample["key"]]
        n_prompt, out_ids = len(r["prompt_token_ids"]), r["output_token_ids"]
        # one row per generated token, at the position that produced it, holding the token fed there
        np.testing.assert_array_equal(arrays["position"], np.arange(n_prompt - 1, n_prompt - 1 + len(out_ids)))
        np.testing.assert_array_equal(arrays["token_id"], [r["prompt_token_ids"][-1], *out_ids[:-1]])
        # the roles of those fed tokens: the prompt's last one, then the answer's (test_infer_roles.py)
        n_train = len(r["augmentation"]["train_order"])
        roles = output_token_roles(tokenizer, out_ids, DEFAULT_ENCODER, 2 * n_train + 1)
        for name, generated in zip(("grid", "row", "col"), roles):
            np.testing.assert_array_equal(arrays[name], [-1, *generated[:-1]])
        assert arrays["blocks.1.hook_resid_post"].shape == (len(out_ids), 64)
        assert np.isfinite(np.asarray(arrays["blocks.3.hook_mlp_out"], np.float32)).all()
        seen.add(sample["key"])
    assert seen == set(records)


def test_resume_skips_done_tasks_and_redoes_a_torn_one(first_run, tiny_model_dir, tasks_file, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(first_run, out)
    before = (out / "predictions.jsonl").read_text()
    capsys.readouterr()
    assert _infer(tiny_model_dir, tasks_file, out, *HOOKS) == 0
    assert "tasks: 3 (3 already predicted, skipped)" in capsys.readouterr().out
    assert (out / "predictions.jsonl").read_text() == before
    # a smaller task set: nothing generated, the other tasks' lines are kept
    assert _infer(tiny_model_dir, tasks_file, out, *HOOKS, "--max-tasks", "1") == 0
    assert "tasks: 1 (1 already predicted, skipped)" in capsys.readouterr().out
    assert (out / "predictions.jsonl").read_text() == before
    assert list(json.loads((out / "submission.json").read_text())) == [TASK_IDS[0]]

    # Drop one task's lines and leave a torn line behind, as a crash mid-append would.
    lines = before.splitlines(keepends=True)
    keep = [ln for ln in lines if json.loads(ln)["task_id"] != "6ea4a07e"]
    (out / "predictions.jsonl").write_text("".join(keep) + lines[0][:40])
    assert _infer(tiny_model_dir, tasks_file, out, *HOOKS) == 0
    assert "tasks: 3 (2 already predicted, skipped)" in capsys.readouterr().out
    redone = read_predictions(out / "predictions.jsonl")
    assert len(redone) == len(lines)
    # greedy decoding is deterministic: the redone task's lines equal the first run's (up to float
    # rounding in the log-probabilities: the redone task ran in a batch of another shape)
    first = {r["key"]: r for r in map(json.loads, lines)}
    for r in redone:
        want = first[r["key"]]
        np.testing.assert_allclose(r.pop("logprobs"), want.pop("logprobs"), atol=1e-5)
        assert r == want
    assert json.loads((out / "submission.json").read_text()) == json.loads((first_run / "submission.json").read_text())
    # its activations were committed by the first run, so they are not written twice
    import arclens

    keys = [smp["key"] for smp, _ in arclens.open_store(str(out / "activations")).samples(hooks=[])]
    assert sorted(keys) == sorted(r["key"] for r in redone)

    # without the same --hooks, the run would mix captured and uncaptured tasks: refused
    assert _infer(tiny_model_dir, tasks_file, out) == 2
    assert "other settings" in capsys.readouterr().err

    # other settings into the same folder are refused
    assert cli_main(["infer", "--model", str(tiny_model_dir), "--tasks", tasks_file, "--out", str(out),
                     "--predictions-per-task", "2", "--max-new-tokens", "13", "--dtype", "float32"]) == 2
    assert "other settings" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Voting and scoring with hand-made predictions (no model)

G1, G2, G3, TRUE_B = [[1, 1]], [[2], [2]], [[3]], [[4, 4], [4, 4]]


def _rec(task_id, test_index, aug, grid, logprobs):
    return {"key": f"{task_id}/{test_index}/{aug}", "task_id": task_id, "test_index": test_index,
            "reverted_grid": grid, "logprobs": logprobs}


def _task(task_id, n_test):
    ex = Example(((0,),), ((0,),))
    return Task(task_id, (ex,), tuple(Example(((0,),)) for _ in range(n_test)))


def test_voting_ties_empty_malformed_and_multi_test():
    tasks = [_task("a", 1), _task("b", 2), _task("c", 1), _task("d", 1)]
    records = [
        # a: G1 has 2 votes, G2 and G3 one each; G3's logprob beats G2's -> attempts G1, G3
        _rec("a", 0, 0, G2, [-2.0, -2.0]), _rec("a", 0, 1, G1, [-5.0]), _rec("a", 0, 2, G3, [-0.5, -0.1]),
        _rec("a", 0, 3, G1, [-9.0]), _rec("a", 0, 4, None, [-0.01]),  # unparsed output: no vote
        # b, test 0: a tie on votes (1 each), broken by the mean logprob; test 1: only unparsed -> padding
        _rec("b", 0, 0, G2, [-1.0, -3.0]), _rec("b", 0, 1, TRUE_B, [-1.5]),
        _rec("b", 1, 0, None, []), _rec("b", 1, 1, None, [-0.2]),
        # c: a single prediction -> attempt_2 is the [] pad
        _rec("c", 0, 0, G3, [-1.0]),
        # d: no records at all (e.g. every output empty or malformed upstream)
    ]
    sub = build_submission(tasks, records)
    assert sub["a"] == [{"attempt_1": G1, "attempt_2": G3}]
    assert sub["b"][0] == {"attempt_1": TRUE_B, "attempt_2": G2}  # mean -1.5 beats mean -2.0
    empty = [list(r) for r in EMPTY_ATTEMPT]
    assert empty == []
    assert sub["b"][1] == {"attempt_1": empty, "attempt_2": empty}
    assert sub["c"] == [{"attempt_1": [[3]], "attempt_2": []}]
    assert sub["d"] == [{"attempt_1": empty, "attempt_2": empty}]

    solutions = {"a": [G3], "b": [TRUE_B, [[7]]], "c": [G1], "d": [[[0]]]}
    r = score_submission(json.loads(json.dumps(sub)), solutions)
    scores = {t.task_id: t.score for t in r.tasks}
    # a: right on attempt 2; b: one of two test outputs; c: wrong; d: no answer never scores,
    # not even against a 1x1 all-black output
    assert scores == {"a": 1.0, "b": 0.5, "c": 0.0, "d": 0.0}
    assert r.total == 1.5


def test_completed_tasks_needs_every_key():
    expected = {"a": {"a/0/0", "a/0/1"}, "b": {"b/0/0"}}
    recs = [{"task_id": "a", "key": "a/0/0"}, {"task_id": "b", "key": "b/0/0"}]
    assert completed_tasks(recs, expected) == {"b"}
    assert completed_tasks([*recs, {"task_id": "a", "key": "a/0/1"}], expected) == {"a", "b"}


def test_bad_arguments_are_user_errors(tiny_model_dir, tasks_file, tmp_path, capsys):
    base = ["infer", "--model", str(tiny_model_dir), "--tasks", tasks_file, "--out", str(tmp_path / "o")]
    assert cli_main([*base, "--max-new-tokens", "0"]) == 2
    assert cli_main([*base, "--with-answer"]) == 2
    assert cli_main([*base, "--hooks", "blocks.9.hook_resid_post"]) == 2
    assert cli_main([*base[:-2], "--out", tasks_file]) == 2  # a file, not a folder
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("arclens: error:") for line in err)


def test_a_correct_answer_parses_and_reverts_to_the_true_output(tokenizer):
    """The record of a sample whose output is the right answer, shown augmented, in the
    encoder's text: parsed in the augmented frame, reverted to the task's true output."""
    from arclens.model.generate import Generation
    from arclens.pipeline.predictions import prediction_record as _record
    from arclens.prompts import PromptConfig, create_grid_encoder, render_samples

    task = next(t for t in load_tasks("arc-agi-1/evaluation") if t.task_id == "6ea4a07e")
    config = PromptConfig(predictions_per_task=8)
    encoder = create_grid_encoder(config.encoder)
    samples = [s for s in render_samples([task], tokenizer, config) if s.test_index == 1]
    assert any(s.augmentation.hflip or s.augmentation.rot90 for s in samples)
    for s in samples:
        truth = task.test[1].output
        answer = encoder.to_text(s.augmentation.apply(truth)).removeprefix("```grid")
        ids = np.asarray(tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id], np.int32)
        gen = Generation(ids, np.full(len(ids), -0.5, np.float32), "eos", np.arange(len(ids), dtype=np.int32))
        r = _record(s, gen, tokenizer, encoder)
        assert r["output_text"] == answer  # the EOS is not part of the text
        assert r["grid"] == [list(row) for row in s.augmentation.apply(truth)]
        assert r["reverted_grid"] == [list(row) for row in truth]


def test_resume_follows_the_model_not_the_spelling_of_its_path(first_run, tiny_model_dir, tasks_file, tmp_path,
                                                               capsys, monkeypatch):
    """infer.json records the model's fingerprint: another spelling or a copy of the same
    checkpoint resumes; other weights under any name are refused before anything is written."""
    import shutil

    from safetensors.numpy import load_file, save_file

    out = tmp_path / "run"
    shutil.copytree(first_run, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    copy = tmp_path / "copy-of-model"
    shutil.copytree(tiny_model_dir, copy)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert _infer("copy-of-model", tasks_file, out, *HOOKS) == 0  # a relative path to a copy
    assert "tasks: 3 (3 already predicted, skipped)" in capsys.readouterr().out

    weights = copy / "model.safetensors"
    tensors = load_file(str(weights))
    name = next(k for k in sorted(tensors) if k.endswith("input_layernorm.weight"))
    tensors[name] = tensors[name] + 1
    save_file(tensors, str(weights), metadata={"format": "pt"})
    assert _infer("copy-of-model", tasks_file, out, *HOOKS) == 2
    assert "model_fingerprint" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before

    # A run folder from before fingerprints resumes under the same spelling only, as it did.
    settings = json.loads((out / "infer.json").read_text())
    del settings["model_fingerprint"]
    (out / "infer.json").write_text(json.dumps(settings))
    assert _infer("copy-of-model", tasks_file, out, *HOOKS) == 2  # another name (and weights)
    assert "model:" in capsys.readouterr().err
    assert _infer(tiny_model_dir, tasks_file, out, *HOOKS) == 0  # the spelling it was created with
    assert "tasks: 3 (3 already predicted, skipped)" in capsys.readouterr().out


def test_infer_json_compares_fingerprints_of_one_scheme_else_names(tmp_path):
    from arclens.errors import UserError
    from arclens.pipeline.predictions import check_settings

    def settings(name, fp):
        return {"model": name, "model_fingerprint": fp, "dtype": "float32"}

    v2a, v2b, v1a = "sampled-sha256-v2:" + "a" * 64, "sampled-sha256-v2:" + "b" * 64, "sampled-sha256-v1:" + "a" * 64
    check_settings(tmp_path, settings("/m", v2a))  # creates infer.json
    check_settings(tmp_path, settings("./m", v2a))  # same model, another spelling
    with pytest.raises(UserError, match="model_fingerprint"):
        check_settings(tmp_path, settings("/m", v2b))  # other weights, same spelling
    # a fingerprint of another scheme cannot be compared: the name decides, as before fingerprints
    check_settings(tmp_path, settings("/m", v1a))
    with pytest.raises(UserError, match="model"):
        check_settings(tmp_path, settings("./m", v1a))
