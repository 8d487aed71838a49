"""Fixtures of the prompts tests."""

from __future__ import annotations

import pytest
from tests.support.arc_tasks import arc_tasks

from arclens.data.tasks import Task


@pytest.fixture(scope="session")
def eval_tasks() -> list[Task]:
    return arc_tasks("eval")
