"""What a qlora-tune run writes about its search, read as hostile input, and what telemetry saw of
each trial. Checks compare the two; neither is adopted on its own word."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator

from grader.checks import Artifacts, CandidateFault, CheckContext, read_json, read_jsonl
from grader.checks.library import run_telemetry
from grader.schema import describe

TRIALS_FILE = "trials.jsonl"
BEST_DIR = "best"
MAX_TRIALS = 1000


class Params(BaseModel):
    """A trial's hyperparameters: the learning rate and LoRA rank and alpha are required; others are kept."""

    model_config = ConfigDict(extra="allow")

    learning_rate: float = Field(gt=0)
    r: StrictInt = Field(gt=0)
    lora_alpha: float = Field(gt=0)

    @field_validator("learning_rate", "lora_alpha")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be finite")
        return value

    def key(self) -> str:
        """The parameters as one comparable string (every key, sorted)."""
        return json.dumps(self.model_dump(), sort_keys=True, default=str)


class Trial(BaseModel):
    """One line of trials.jsonl, and best/trial.json."""

    model_config = ConfigDict(extra="allow")

    trial: StrictInt
    params: Params
    eval_loss: float

    @field_validator("eval_loss")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value) or value < 0:
            raise ValueError("must be a finite NLL (>= 0)")
        return value


def _trial(value: Any, where: str) -> Trial:
    try:
        return Trial.model_validate(value)
    except ValidationError as exc:
        raise CandidateFault(f"{where}: {describe(exc)}") from None


def trials(artifacts: Artifacts, ctx: CheckContext) -> list[Trial]:
    """trials.jsonl, validated; trial numbers must be unique."""

    def read() -> list[Trial]:
        rows = read_jsonl(artifacts.require("main") / TRIALS_FILE, max_lines=MAX_TRIALS)
        parsed = [_trial(row, f"{TRIALS_FILE} line {n}") for n, row in enumerate(rows, start=1)]
        numbers = [t.trial for t in parsed]
        if len(set(numbers)) != len(numbers):
            raise CandidateFault(f"{TRIALS_FILE}: trial numbers repeat ({sorted(numbers)})")
        if not parsed:
            raise CandidateFault(f"{TRIALS_FILE} lists no trials")
        return parsed

    return ctx.memo("trials", read)


def chosen(artifacts: Artifacts, ctx: CheckContext) -> Trial:
    """best/trial.json, validated."""
    path = artifacts.require("main") / BEST_DIR / "trial.json"
    return ctx.memo("chosen", lambda: _trial(read_json(path), f"{BEST_DIR}/trial.json"))


def best_adapter(out_dir: Path) -> Path:
    return out_dir / BEST_DIR / "adapter"


class SeenTrial(BaseModel):
    """One ``Trainer.train`` call as telemetry recorded it: what a trial really ran."""

    pid: int
    trainer_id: int
    learning_rate: float | None
    r: int | None
    lora_alpha: float | None
    global_step: int | None
    ended: bool
    error: str | None
    quantization: dict[str, Any] | None
    quant4_grad_forwards: int | None
    losses: list[tuple[int, float]]
    eval_losses: list[tuple[int, float]]

    @property
    def trained(self) -> bool:
        return self.ended and self.error is None and bool(self.global_step)


def seen_trials(artifacts: Artifacts, ctx: CheckContext) -> list[SeenTrial]:
    """Every ``Trainer.train`` call of the run, with the learning rate its trainer was built with and
    the LoRA rank of the model it trained (from the PEFT config seen at train start)."""

    def compute() -> list[SeenTrial]:
        tel = run_telemetry(artifacts, ctx)
        args = {(t.pid, t.trainer_id): t.args for t in tel.trainers}
        seen = []
        for run in tel.train_runs:
            config = next(iter((run.peft_configs or {}).values()), None) or {}
            lr = args.get((run.pid, run.trainer_id), {}).get("learning_rate")
            seen.append(SeenTrial(
                pid=run.pid, trainer_id=run.trainer_id, learning_rate=_number(lr), r=_int(config.get("r")),
                lora_alpha=_number(config.get("lora_alpha")), global_step=run.global_step, ended=run.ended,
                error=run.error, quantization=run.quantization.model_dump() if run.quantization else None,
                quant4_grad_forwards=run.quant4_grad_forwards_in_model, losses=run.losses, eval_losses=run.eval_losses))
        return seen

    return ctx.memo("seen-trials", compute)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def same_lr(a: float | None, b: float) -> bool:
    return a is not None and math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)
