"""task.yaml validation: run variants, their own entry commands and the placeholders they use."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from grader.taskspec import TaskSpec

TORCHRUN = "torchrun --standalone --nproc_per_node 2 main.py --data {data} --out {out} --seed {seed}"


def spec(runs: list[dict[str, Any]], entry: str = "python main.py --data {data} --out {out} --seed {seed}") -> TaskSpec:
    return TaskSpec.model_validate({
        "id": "t", "version": "1", "title": "t", "summary": "s", "level": "junior", "roles": ["llm-engineer"],
        "entry": entry, "inputs": {"data": {"generated": True}},
        "data": {"generator": "g.py", "default_hidden_seed": "s"}, "runs": runs, "checks": [{"id": "runs", "title": "t"}],
    })


def test_a_run_may_replace_the_entry_and_the_others_keep_the_tasks() -> None:
    s = spec([{"name": "main"}, {"name": "ddp", "entry": TORCHRUN}])
    assert s.entry_of("main") == s.entry
    assert s.entry_of("ddp") == TORCHRUN


def test_unknown_placeholders_in_a_runs_entry_are_named() -> None:
    with pytest.raises(ValidationError, match=r"runs\[1\]\.entry uses unknown placeholders: nope, workers"):
        spec([{"name": "main"}, {"name": "ddp", "entry": TORCHRUN + " {nope} {workers}"}])


def test_a_runs_entry_is_filled_with_its_own_params_not_another_runs() -> None:
    own = spec([{"name": "main"}, {"name": "ddp", "params": {"workers": 2}, "entry": TORCHRUN + " {workers}"}])
    assert own.entry_of("ddp").endswith("{workers}")
    with pytest.raises(ValidationError, match=r"runs\[0\]\.entry uses unknown placeholders: workers"):
        spec([{"name": "main", "entry": TORCHRUN + " {workers}"}, {"name": "ddp", "params": {"workers": 2}}])


def test_unknown_placeholders_in_the_tasks_entry_are_still_named() -> None:
    with pytest.raises(ValidationError, match="entry uses unknown placeholders: nope"):
        spec([{"name": "main"}], entry="python main.py {nope}")
