"""Prompts compared byte for byte with what arc24's own code rendered (goldens/README.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.support.arc_tasks import arc_task

from arclens.prompts import PromptConfig, render_samples

GOLDENS = Path(__file__).parent / "goldens"
CASES = json.loads((GOLDENS / "prompts.json").read_text(encoding="utf-8"))["cases"]


def _case_id(case) -> str:
    form = "train" if case["with_answer"] else "infer"
    aug = f"ppt{case['ppt']}-seed{case['seed']}" if case["augment"] else "noaug"
    return f"{case['version']}|{case['encoder']}|{form}|{aug}"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_prompts_match_arc24(case, tokenizer):
    config = PromptConfig(
        version=case["version"],
        encoder=case["encoder"],
        predictions_per_task=case["ppt"],
        seed=case["seed"],
        augment=case["augment"],
        with_answer=case["with_answer"],
    )
    for task_id, golden in case["prompts"].items():
        task = arc_task(task_id)
        samples = list(render_samples([task], tokenizer, config))
        # arc24 orders its prompts augmentation-major; ours are test-major (SPEC key order).
        golden = sorted(golden, key=lambda g: g["test_index"])
        golden_by_test = {}
        for g in golden:
            golden_by_test.setdefault(g["test_index"], []).append(g)
        assert len(samples) == len(golden)
        for s in samples:
            g = golden_by_test[s.test_index][s.aug_index]
            assert s.text == g["text"], f"{s.key}: text differs from arc24's"
            assert (s.augmentation.hflip, s.augmentation.rot90) == (g["hflip"], g["n_rot90"])
            assert list(s.augmentation.color_map) == g["color_map"]
            assert s.text.endswith("```<|im_end|>\n" if case["with_answer"] else "\n\n```grid")
