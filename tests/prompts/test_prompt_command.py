"""`arclens prompts` end to end, render_samples contracts, and the errors users can meet."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from tests.support.arc_tasks import arc_task

from arclens.cli import main
from arclens.errors import UserError
from arclens.prompts import PromptConfig, load_tokenizer, render_samples
from arclens.prompts.chat import remove_assistant_ending


@pytest.fixture()
def tasks_file(tmp_path):
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps({t: arc_task(t).to_json() for t in ("6150a2bd", "44f52bb0")}))
    return path


def test_prompts_command_writes_one_line_per_sample(tasks_file, tiny_model_dir, tokenizer, tmp_path, capsys):
    out = tmp_path / "prompts.jsonl"
    argv = ["prompts", "--tasks", str(tasks_file), "--model", str(tiny_model_dir), "--out", str(out)]
    assert main(argv + ["--predictions-per-task", "16", "--seed", "3"]) == 0
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    # 6150a2bd has one test input, 44f52bb0 two; 16 prompts per test input
    assert len(lines) == 16 * 3
    assert [ln["key"] for ln in lines[:3]] == ["44f52bb0/0/0", "44f52bb0/0/1", "44f52bb0/0/2"]
    assert {tuple(sorted(ln)) for ln in lines} == {
        ("augmentation", "key", "task_id", "test_index", "text", "token_ids")
    }
    assert all(ln["token_ids"] == tokenizer(ln["text"])["input_ids"] for ln in lines)
    assert all(ln["text"].endswith("### Output\n\n```grid") for ln in lines)

    assert main(argv + ["--no-augment", "--with-answer", "--prompt-version", "input-from-inputs-v0"]) == 0
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 3
    assert lines[0]["augmentation"] == {
        "hflip": False,
        "rot90": 0,
        "color_map": list(range(10)),
        "train_order": list(range(6)),
    }
    assert lines[0]["text"].endswith("```<|im_end|>\n") and "## New grid" in lines[0]["text"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--encoder", "NoSuchEncoder()"], "unknown encoder"),
        (["--prompt-version", "output-from-examples-v9"], "--prompt-version"),
        (["--predictions-per-task", "0"], "--predictions-per-task"),
    ],
)
def test_prompts_command_bad_options(extra, message, tasks_file, tiny_model_dir, tmp_path, capsys):
    argv = [
        "prompts",
        "--tasks",
        str(tasks_file),
        "--model",
        str(tiny_model_dir),
        "--out",
        str(tmp_path / "p.jsonl"),
    ]
    assert main(argv + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_missing_model_and_missing_answer(tmp_path, tokenizer, tiny_model_dir):
    with pytest.raises(UserError, match="--model"):
        load_tokenizer(str(tmp_path / "no-such-model"))
    (tmp_path / "config-only").mkdir()
    (tmp_path / "config-only" / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    with pytest.raises(UserError, match="no tokenizer files"):
        load_tokenizer(str(tmp_path / "config-only"))
    task = arc_task("6150a2bd")
    task = type(task)(task.task_id, task.train, tuple(type(e)(e.input, None) for e in task.test))
    with pytest.raises(UserError, match="6150a2bd.*test output"):
        list(render_samples([task], tokenizer, PromptConfig(with_answer=True)))
    assert len(list(render_samples([task], tokenizer, PromptConfig()))) == 8


def test_unknown_or_missing_chat_template_is_a_user_error(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    tok.chat_template = "{% for m in messages %}<<{{ m.role }}>>{{ m.content }}<</turn>>{% endfor %}"
    with pytest.raises(UserError, match="unknown chat template"):
        list(render_samples([arc_task("6150a2bd")], tok, PromptConfig()))
    # training prompts keep the ending, so any template that keeps contents verbatim works
    assert list(render_samples([arc_task("6150a2bd")], tok, PromptConfig(with_answer=True, augment=False)))
    tok.chat_template = "{% for m in messages %}{{ m.content | upper }}<|im_end|>{% endfor %}"
    with pytest.raises(UserError, match="changes message contents"):
        list(render_samples([arc_task("6150a2bd")], tok, PromptConfig()))
    tok.chat_template = None
    with pytest.raises(UserError, match="no chat template"):
        list(render_samples([arc_task("6150a2bd")], tok, PromptConfig()))


def test_remove_assistant_ending_as_arc24():
    assert remove_assistant_ending("a<|im_end|>\nb\n```grid<|im_end|>\n") == "a<|im_end|>\nb\n```grid"
    assert remove_assistant_ending("x<|eot_id|>y<|im_end|>z<|eot_id|>") == "x<|eot_id|>y<|im_end|>z"
    assert remove_assistant_ending("p<|end|>\n<|endoftext|>") == "p"


def test_samples_are_deterministic_and_keyed(tokenizer):
    tasks = [arc_task("27a28665"), arc_task("6150a2bd")]
    a = list(render_samples(tasks, tokenizer, PromptConfig(seed=9), batch_size=5))
    b = list(render_samples(tasks, tokenizer, PromptConfig(seed=9)))
    assert [s.key for s in a] == [
        f"{t.task_id}/{i}/{k}" for t in tasks for i in range(len(t.test)) for k in range(8)
    ]
    for x, y in zip(a, b):
        assert (
            x.text == y.text and np.array_equal(x.token_ids, y.token_ids) and np.array_equal(x.grid, y.grid)
        )
    # the same augmentation for every test input of a task (arc24 augments the whole task)
    assert a[0].augmentation == a[8].augmentation
    args = argparse.Namespace(
        prompt_version="output-from-examples-v0",
        encoder=" GridCodeBlockEncoder( MinimalGridEncoder() ) ",
        predictions_per_task=16,
        seed=2,
        no_augment=True,
        with_answer=True,
    )
    assert PromptConfig.from_args(args) == PromptConfig(
        "output-from-examples-v0", "GridCodeBlockEncoder(MinimalGridEncoder())", 16, 2, False, True
    )
    assert PromptConfig().to_json() == {
        "version": "output-from-examples-v1",
        "encoder": "GridShapeEncoder(RowNumberEncoder(MinimalGridEncoder()))",
        "predictions_per_task": 8,
        "seed": 0,
        "augment": True,
        "with_answer": False,
    }


LLAMA3_STYLE_TEMPLATE = (
    "{{ '<|begin_of_text|>' }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
)


def test_other_chat_templates_cut_as_arc24_does(tiny_model_dir):
    # A llama-3-style template (content trimmed, <|eot_id|> ends a turn): arc24 cuts at the last
    # <|eot_id|>; the skeleton assembly must equal the direct rendering (checked inside) and the
    # roles must still be exact.
    tok = load_tokenizer(str(tiny_model_dir))
    tok.chat_template = LLAMA3_STYLE_TEMPLATE
    task = arc_task("6150a2bd")
    for version in ("output-from-examples-v0", "input-from-inputs-v0"):
        samples = list(render_samples([task], tok, PromptConfig(version=version)))
        assert len(samples) == 8
        for s in samples:
            assert s.text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n")
            assert s.text.endswith(
                "<|start_header_id|>assistant<|end_header_id|>\n\n"
                + ("### Output" if version.startswith("output") else "## New grid")
                + "\n\n```grid"
            )
            n_cells = int((s.grid >= 0).sum())
            shown = [
                g
                for e in task.train
                for g in ((e.input, e.output) if version.startswith("output") else (e.input,))
            ]
            if version.startswith("output"):
                shown.append(task.test[0].input)
            assert n_cells == sum(len(g) * len(g[0]) for g in shown)
