"""PromptConfig.flags_changed: the prompt options a command line set away from the defaults, by
their flags, read from the very parser the commands use (so a changed default cannot drift)."""

from __future__ import annotations

import pytest

from arclens.cli import build_parser
from arclens.prompts import PromptConfig


def _config(*extra: str) -> PromptConfig:
    args = build_parser().parse_args(["extract", "--model", "m", "--tasks", "t", "--out", "o", *extra])
    return PromptConfig.from_args(args)


def test_the_defaults_change_nothing():
    assert _config().flags_changed() == []
    # the encoder is compared in its canonical spelling, not as typed
    assert _config("--encoder", "GridShapeEncoder( RowNumberEncoder(MinimalGridEncoder()) )").flags_changed() == []


@pytest.mark.parametrize("extra, flag", [
    (("--seed", "3"), "--seed"), (("--predictions-per-task", "2"), "--predictions-per-task"),
    (("--no-augment",), "--no-augment"), (("--with-answer",), "--with-answer"),
    (("--encoder", "MinimalGridEncoder()"), "--encoder"),
])
def test_each_option_is_named_by_its_flag(extra, flag):
    assert _config(*extra).flags_changed() == [flag]
    if flag == "--seed":
        assert _config(*extra).flags_changed(seed_flag="--prompt-seed") == ["--prompt-seed"]
