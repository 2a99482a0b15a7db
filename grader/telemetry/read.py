"""Read the run telemetry written by ``site/sitecustomize.py`` and summarise it.

What it records
    Inside every Python process of the candidate's run, without the candidate's cooperation:
    models loaded (``PreTrainedModel.from_pretrained``), PEFT adapters applied
    (``get_peft_model``, ``PeftModel.from_pretrained``), each ``Trainer`` built (class and key
    arguments) and each ``Trainer.train`` (trainable/total parameters at start and end, the
    parameters the optimizer holds; at start, how its model's linear layers are quantised and
    which LoRA layers sit on bitsandbytes 4-bit ones, :class:`QuantizationFacts`; at end, how
    many forward calls went through bitsandbytes ``Linear4bit`` layers during it, with gradients
    enabled, and on the trainer's model's own layers; for a trainer with a ``ref_model``
    attribute, as TRL's DPOTrainer has, a :class:`Probe`: a fixed conversation's per-token
    log-probabilities under its model and its reference model, see ``site/tunegrade_probe.py``),
    every ``Trainer.log`` (training loss, eval_loss, step), ``datasets.load_dataset``/``load_from_disk``
    calls, files opened for reading through ``open``/``io.open``/``pathlib``, files written through
    those or by ``safetensors.torch.save_file``/``torch.save`` (which ``save_pretrained`` and
    checkpoints use), fingerprints of every sequence that received a gradient (``trained_tokens``:
    token n-gram hashes, see ``site/tunegrade_fingerprint.py``), and at exit the wall time, peak RSS
    and peak CUDA memory. Each process's start records torchrun's ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``;
    under torchrun the launcher is the main process and each rank's worker its child.

Event format (one JSON object per line, appended; see :data:`Event` for every field)
    ``{"v": 1, "event": "<kind>", "pid": 123, "t": <unix time>, ...}`` where kind is one of
    ``start``, ``file_read``, ``file_written``, ``model_loaded``, ``peft_applied``, ``trainer_init``,
    ``train_start``, ``log``, ``train_end``, ``trained_tokens``, ``dataset_load``, ``hook_error``,
    ``exit``.

Wiring (see :func:`write_site`, :func:`telemetry_mounts` and :func:`telemetry_env`)
    Each run gets its own site folder (the hooks, and a config file naming the output file: the
    environment names none), mounted read-only and put on ``PYTHONPATH``, and a fresh writable
    folder for the output; then :func:`read_telemetry` on the host file after the run.

Honest limits
    The candidate's code runs in the same process as the hooks. It can undo them, skip them
    (``python -I``/``-S``/``-E``, ``os._exit``, a subclass that never calls ``super()``), or
    write to or delete the file. Reads by native code (pyarrow, safetensors, tokenizers) and
    through ``os.open`` are not seen; nor are writes by native code other than the two wrapped
    (a tokenizer's ``tokenizer.json``, written by the tokenizers library; pyarrow writers given a
    path), through ``os.open``, or files moved or linked into place (``os.replace``, ``os.rename``).
    A written file is noted once per process: when it is opened (even if nothing is then written)
    or, for the two native writers, when the call ends and the file exists. The quantisation facts
    describe ``trainer.model`` when ``train`` starts (a model swapped in later is not scanned), and
    the 4-bit forward counter is a class-level wrapper of ``Linear4bit.forward`` (a subclass
    overriding ``forward`` without ``super()`` is not counted). The probe scores ``trainer.model``
    and the reference as they are when ``train`` starts (before a checkpoint it resumes from is
    loaded), with the trainer's tokenizer and its chat template, finding the reference the way TRL
    1.16's DPOTrainer does (another trainer with a ``ref_model`` attribute may use it otherwise);
    the reference log-probabilities TRL precomputes from a model without adapters are not scored.
    So telemetry is evidence, never proof: checks cross-check it with artifacts the grader measures
    itself (adapter files, parameter counts of saved weights, the sandbox's own timing and memory),
    and a missing, truncated or garbled file, or a run without its ``exit`` event, is itself evidence.
    Every line is validated; lines that do not match a known event are counted in
    ``malformed_lines`` and otherwise ignored.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    NonNegativeInt,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from grader.schema import Strict
from sandbox import Mount

SCHEMA_VERSION = 1
FORMAT_VERSION = 1  # the "v" of each event line; sitecustomize.FORMAT_VERSION must match
SITE_DIR = Path(__file__).parent / "site"
SITE_FILES = ("sitecustomize.py", "tunegrade_fingerprint.py", "tunegrade_probe.py")
CONFIG_FILE = "tunegrade_telemetry.txt"  # sitecustomize.CONFIG_FILE
TELEMETRY_FILENAME = "telemetry.jsonl"
SANDBOX_TELEMETRY = "/sandbox/telemetry"
SANDBOX_TELEMETRY_SITE = "/sandbox/telemetry-site"
MAX_TELEMETRY_BYTES = 64 << 20


class _Event(Strict):
    v: Literal[1] = Field(description="Event format version (FORMAT_VERSION).")
    pid: int = Field(description="Process that wrote the event.")
    t: float = Field(description="Unix time of the event.")


class StartEvent(_Event):
    """A Python process started with telemetry on."""

    event: Literal["start"]
    ppid: int
    argv: list[str] = Field(description="sys.orig_argv: the full command line.")
    cwd: str | None
    python: str | None
    rank: int | None = Field(None, description="RANK from the environment (torchrun's workers); None if unset.")
    local_rank: int | None = Field(None, description="LOCAL_RANK from the environment; None if unset.")
    world_size: int | None = Field(None, description="WORLD_SIZE from the environment; None if unset.")


class FileReadEvent(_Event):
    """A file opened for reading (first time per process; paths under the Python prefix omitted)."""

    event: Literal["file_read"]
    path: str = Field(description="Absolute path as the process saw it (in-sandbox path).")
    mode: str


class FileWrittenEvent(_Event):
    """A file opened for writing (mode with w, a, x or +) through ``open``/``io.open``/pathlib, or
    written by ``safetensors.torch.save_file`` or ``torch.save`` given a path (first time per process)."""

    event: Literal["file_written"]
    path: str = Field(description="Absolute path as the process saw it (in-sandbox path).")
    via: str = Field(description='"open", "safetensors.torch.save_file" or "torch.save".')


class ModelLoadedEvent(_Event):
    """A ``PreTrainedModel.from_pretrained`` call returned (outermost call only)."""

    event: Literal["model_loaded"]
    via: str
    source: Any = Field(description="The name or path passed in.")
    cls: str
    module: str
    name_or_path: str | None = Field(description="config._name_or_path of the loaded model.")
    dtype: str | None = Field(description="The loaded model's dtype, e.g. torch.bfloat16.")
    requested_dtype: str | None = Field(description="The dtype/torch_dtype argument, if any.")
    quantization_config: dict[str, Any] | None = Field(description="config.quantization_config of the model.")
    requested_quantization: Any = Field(description="The quantization_config argument, if any.")
    device_map: Any
    num_params: int | None


class PeftAppliedEvent(_Event):
    """An adapter was applied: ``get_peft_model`` or ``PeftModel.from_pretrained``."""

    event: Literal["peft_applied"]
    via: str
    peft_type: str | None
    config: dict[str, Any] | None = Field(description="The PEFT config as to_dict() gives it.")
    adapter_name: Any
    base_cls: str | None
    base_name_or_path: str | None
    model_cls: str
    trainable_params: int | None = Field(description="Right after the adapter was applied.")
    total_params: int | None


class TrainerInitEvent(_Event):
    """A ``Trainer`` (or subclass, e.g. SFTTrainer) finished ``__init__``."""

    event: Literal["trainer_init"]
    trainer_id: int = Field(description="A number unique to the trainer in its process; with pid, links train "
                                        "and log events.")
    cls: str
    bases: list[str]
    args_cls: str
    args: dict[str, Any] = Field(description="Key training arguments (learning_rate, max_steps, bf16, ...).")
    model_cls: str | None
    name_or_path: str | None
    peft_configs: dict[str, dict[str, Any]] | None
    train_rows: int | None
    eval_rows: int | None


class QuantizationFacts(Strict):
    """How a trainer's model was built, from one pass over its ``named_modules`` at train start.

    4-bit layers are bitsandbytes ``Linear4bit`` (or a subclass, e.g. ``LinearNF4``); their
    ``weight.quant_state`` gives the quant type and whether the quantisation constants were
    themselves quantised (``nested``: QLoRA's double quantisation). Full-precision linear layers are
    plain ``torch.nn.Linear`` (or a subclass from neither peft nor a quantisation library) that are
    base weights: LoRA's own ``lora_A``/``lora_B`` submodules and the output head are excluded, so a
    QLoRA model has none and plain LoRA on a float base has one per adapted or frozen projection.
    """

    linear4bit: NonNegativeInt = Field(description="bitsandbytes Linear4bit layers.")
    quant_types: list[str] = Field(description='Distinct quant_state.quant_type ("nf4", "fp4"; "none": not quantised).')
    double_quant: list[bool] = Field(description="Distinct quant_state.nested: True is double quantisation.")
    compute_dtypes: list[str] = Field(description="Distinct compute_dtype of the 4-bit layers, e.g. torch.float32.")
    quant_storage: list[str] = Field(description="Distinct storage dtype of the packed 4-bit weights.")
    other_quantized: NonNegativeInt = Field(
        description="Other quantised linear layers (bitsandbytes Linear8bitLt, GPTQ, AWQ, HQQ, ...; a plain "
        "Linear whose weight is a quantisation library's tensor or not floating point)."
    )
    other_quantized_kinds: list[str] = Field(
        description="Their classes, module-qualified (for a plain Linear, with [weight class:dtype]); at most 20."
    )
    full_precision_linear: NonNegativeInt = Field(description="Base linear layers left in full precision.")
    full_precision_dtypes: list[str] = Field(description="Distinct dtypes of their weights, e.g. torch.bfloat16.")
    full_precision_examples: list[str] = Field(description="Names of the first five.")
    lora_layers: NonNegativeInt = Field(description="peft LoRA layers (modules with lora_A and base_layer).")
    lora_on_4bit: NonNegativeInt = Field(description="Of those, the ones whose (innermost) base layer is 4-bit.")
    lora_trainable: NonNegativeInt = Field(description="LoRA layers with a lora_A/lora_B parameter requiring grad.")
    lora_trainable_on_4bit: NonNegativeInt = Field(description="Of those, the ones on a 4-bit base layer.")
    lora_base_types: list[str] = Field(description="Distinct class names of the LoRA layers' base layers.")
    modules_scanned: NonNegativeInt
    capped: bool = Field(description="The scan stopped at its cap; the counts are then lower bounds.")

    @model_validator(mode="after")
    def _consistent(self) -> QuantizationFacts:
        subsets = self.lora_trainable_on_4bit <= min(self.lora_on_4bit, self.lora_trainable)
        if not subsets or max(self.lora_on_4bit, self.lora_trainable) > self.lora_layers:
            raise ValueError("LoRA layer counts are inconsistent (a subset larger than its set)")
        return self


class Probe(Strict):
    """``site/tunegrade_probe.py``'s fixed conversation scored as a DPO-style train started: the grader
    scores it under models it loads itself (``token_logprobs(model, probe_ids(tokenizer))``) and
    compares, to tell which model the training started from and which reference it used."""

    ids: list[int] = Field(description="PROBE_CHAT's token ids under the trainer's tokenizer and chat template.")
    policy: list[float] = Field(description="log p(ids[t] | ids[:t]), t >= 1, under the trainer's model as it started.")
    reference: list[float] | None = Field(description="The same under the reference model; None when none was found.")
    reference_via: Literal["ref_model", "ref_adapter", "disabled_adapters"] | None = Field(
        description='How TRL finds the reference: trainer.ref_model, the PEFT model\'s "ref" adapter (a copy of an '
        "adapter training continues), or the PEFT model with its adapters disabled; None: none of these applies "
        "(e.g. TRL precomputed the reference log-probabilities from a model without adapters)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Probe:
        scored = [self.policy] + ([] if self.reference is None else [self.reference])
        if any(len(s) != max(len(self.ids) - 1, 0) for s in scored):
            raise ValueError("a probe needs one log-probability per token after the first")
        if (self.reference is None) != (self.reference_via is None):
            raise ValueError("reference and reference_via are both set or both None")
        return self


class TrainStartEvent(_Event):
    """``Trainer.train`` was entered."""

    event: Literal["train_start"]
    trainer_id: int
    cls: str
    bases: list[str]
    model_cls: str | None
    name_or_path: str | None
    trainable_params: int | None
    total_params: int | None
    peft_configs: dict[str, dict[str, Any]] | None
    quantization: QuantizationFacts | None = Field(
        None, description="The trainer's model's linear layers; None when it could not be scanned (or older files)."
    )
    probe: Probe | None = Field(
        None, description="Only for a trainer with a ref_model attribute (DPO-style); None when it failed (see "
        "hook_errors) or for other trainers."
    )


class TrainEndEvent(_Event):
    """``Trainer.train`` returned or raised."""

    event: Literal["train_end"]
    trainer_id: int
    wall_s: float
    global_step: int | None
    trainable_params: int | None
    total_params: int | None
    optimizer_params: int | None = Field(description="Parameters held by the optimizer's param groups.")
    error: str | None = Field(description="Exception type if train raised.")
    quant4_forwards: NonNegativeInt | None = Field(
        None, description="bitsandbytes Linear4bit forward calls during this train call, any model, any thread."
    )
    quant4_grad_forwards: NonNegativeInt | None = Field(
        None, description="Of those, the calls made with gradients enabled (training, not evaluation)."
    )
    quant4_grad_forwards_in_model: NonNegativeInt | None = Field(
        None, description="Of those, the calls on the trainer's model's own 4-bit layers (as scanned at start)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> TrainEndEvent:
        counts = [self.quant4_forwards, self.quant4_grad_forwards, self.quant4_grad_forwards_in_model]
        known = [c for c in counts if c is not None]
        if known != sorted(known, reverse=True):
            raise ValueError("4-bit forward counts are inconsistent (a subset larger than its set)")
        return self


class LogEvent(_Event):
    """One ``Trainer.log`` call (numeric entries only)."""

    event: Literal["log"]
    trainer_id: int
    step: int | None
    epoch: float | None
    logs: dict[str, float]


class TrainedTokensEvent(_Event):
    """Sequences that received a gradient since the last such event, as new n-gram fingerprints."""

    event: Literal["trained_tokens"]
    n: int = Field(description="Tokens per n-gram (tunegrade_fingerprint.N).")
    sample: int = Field(description="Kept n-grams have hash % sample == 0 (tunegrade_fingerprint.SAMPLE).")
    rows: int = Field(ge=0, description="Sequences trained on since the last event.")
    tokens: int = Field(ge=0, description="Their non-padding tokens.")
    hashes: str = Field(description="New n-gram hashes, 16 hex digits each, space-separated.")


class DatasetLoadEvent(_Event):
    """``datasets.load_dataset`` or ``load_from_disk`` was called."""

    event: Literal["dataset_load"]
    via: str
    path: Any
    name: Any = None
    data_dir: Any = None
    data_files: Any = None
    split: Any = None


class HookErrorEvent(_Event):
    """A hook could not be installed on a module (e.g. an API changed)."""

    event: Literal["hook_error"]
    module: str
    error: str


class ExitEvent(_Event):
    """The process exited normally (atexit ran): not written on os._exit, SIGKILL or a fatal signal."""

    event: Literal["exit"]
    wall_s: float = Field(description="Seconds since the process started.")
    peak_rss_mb: float = Field(description="ru_maxrss of the process itself.")
    children_peak_rss_mb: float = Field(description="Largest ru_maxrss among its waited-for children.")
    cuda_peak_mb: float | None = Field(description="Peak allocated CUDA memory summed over devices; None if unused.")
    cuda_reserved_peak_mb: float | None
    uncaught: str | None = Field(description="Type of an uncaught exception, if any.")
    dropped: int = Field(description="Events the writer dropped (over its caps).")


Event = Annotated[
    StartEvent
    | FileReadEvent
    | FileWrittenEvent
    | ModelLoadedEvent
    | PeftAppliedEvent
    | TrainerInitEvent
    | TrainStartEvent
    | TrainEndEvent
    | LogEvent
    | TrainedTokensEvent
    | DatasetLoadEvent
    | HookErrorEvent
    | ExitEvent,
    Field(discriminator="event"),
]
_EVENT = TypeAdapter(Event)


class ProcessInfo(Strict):
    """One Python process of the run."""

    pid: int
    ppid: int | None = None
    argv: list[str] = Field(default_factory=list)
    rank: int | None = Field(None, description="RANK, LOCAL_RANK and WORLD_SIZE from its start event.")
    local_rank: int | None = None
    world_size: int | None = None
    exited: bool = Field(False, description="Its exit event was written.")
    wall_s: float | None = None
    peak_rss_mb: float | None = Field(None, description="Max of its own and its children's peak RSS.")
    cuda_peak_mb: float | None = None
    uncaught: str | None = None


class TrainRun(Strict):
    """One ``Trainer.train`` call: start facts, and end facts when it returned."""

    pid: int
    trainer_id: int
    cls: str
    model_cls: str | None
    trainable_params: int | None = Field(description="At train start.")
    total_params: int | None
    peft_configs: dict[str, dict[str, Any]] | None
    ended: bool = False
    wall_s: float | None = None
    global_step: int | None = None
    trainable_params_end: int | None = None
    optimizer_params: int | None = None
    error: str | None = None
    quantization: QuantizationFacts | None = Field(None, description="At train start (TrainStartEvent).")
    probe: Probe | None = Field(None, description="At train start, DPO-style trainers only (TrainStartEvent).")
    quant4_forwards: int | None = Field(None, description="At train end (TrainEndEvent).")
    quant4_grad_forwards: int | None = None
    quant4_grad_forwards_in_model: int | None = None
    losses: list[tuple[int, float]] = Field(default_factory=list, description="(global step, training loss) logged "
                                            "by this run's trainer while it trained.")
    eval_losses: list[tuple[int, float]] = Field(default_factory=list, description="(global step, eval_loss) logged "
                                                 "by this run's trainer, during or after training.")


class Telemetry(Strict):
    """Summary of one run's telemetry file."""

    schema_version: int = SCHEMA_VERSION
    present: bool = Field(description="A regular file was found; False is itself evidence.")
    truncated: bool = Field(False, description=f"Only the first {MAX_TELEMETRY_BYTES >> 20} MiB were read.")
    malformed_lines: int = Field(0, description="Lines that were not a valid event (garbage, forgeries, cut lines).")
    processes: list[ProcessInfo] = Field(default_factory=list)
    models_loaded: list[ModelLoadedEvent] = Field(default_factory=list)
    peft_configs: list[PeftAppliedEvent] = Field(default_factory=list)
    trainers: list[TrainerInitEvent] = Field(default_factory=list)
    trainer: TrainerInitEvent | None = Field(
        None, description="The trainer of the run chosen below, else the last built."
    )
    train_runs: list[TrainRun] = Field(default_factory=list)
    trainable_params: int | None = Field(
        None, description="At train start, from the run training the largest fraction of its parameters."
    )
    total_params: int | None = None
    losses: list[tuple[int, float]] = Field(default_factory=list, description="(global step, training loss).")
    eval_losses: list[tuple[int, float]] = Field(default_factory=list, description="(global step, eval_loss).")
    trained_rows: int = Field(0, description="Sequences that received a gradient (every pass counts).")
    trained_tokens: int = Field(0, description="Their non-padding tokens.")
    trained_ngrams: int = Field(0, description="Distinct n-gram fingerprints of them (see trained_fingerprints).")
    datasets_loaded: list[DatasetLoadEvent] = Field(default_factory=list)
    files_read: list[str] = Field(default_factory=list, description="Sorted, unique, in-sandbox paths.")
    files_written: dict[str, list[int]] = Field(
        default_factory=dict, description="In-sandbox path -> the pids that wrote it (sorted); paths sorted."
    )
    hook_errors: list[str] = Field(default_factory=list)
    wall_s: float | None = Field(
        None, description="Wall time of the main process, from its exit event: the first process whose parent is "
        "not in the file (under torchrun, the launcher: its workers are its children)."
    )
    exited: bool = Field(False, description="The main process wrote its exit event.")
    all_exited: bool = Field(
        False, description="Every process with a start event (torchrun's workers, subprocesses) wrote its exit event."
    )
    peak_rss_mb: float | None = Field(None, description="Largest peak RSS of any process or its children.")
    cuda_peak_mb: float | None = Field(None, description="Largest peak CUDA memory of any process.")


def write_site(dest: Path, output_in_sandbox: str) -> None:
    """A run's own site folder: the hooks, and beside them the file naming where they write."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in SITE_FILES:
        shutil.copyfile(SITE_DIR / name, dest / name)
    (dest / CONFIG_FILE).write_text(output_in_sandbox + "\n", encoding="utf-8")


def telemetry_env(site_dir_in_sandbox: str, *, pythonpath: str | None = None) -> dict[str, str]:
    """Environment turning telemetry on; ``pythonpath`` (if the run sets one) goes after the site dir."""
    return {"PYTHONPATH": site_dir_in_sandbox + (os.pathsep + pythonpath if pythonpath else "")}


def telemetry_mounts(log_dir: Path) -> tuple[Mount, Mount]:
    """(the run's site folder read-only, its output folder writable), under ``log_dir``, at their
    conventional in-sandbox targets; the caller creates the output folder and fills the site with
    :func:`write_site`."""
    return (
        Mount(source=log_dir / "telemetry-site", target=SANDBOX_TELEMETRY_SITE),
        Mount(source=log_dir / "telemetry", target=SANDBOX_TELEMETRY, writable=True),
    )


def _read_capped(path: Path) -> tuple[bytes | None, bool]:
    """Bytes of a regular file (no symlink, no fifo), at most MAX_TELEMETRY_BYTES; and whether cut."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None, False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None, False
        chunks, size = [], 0
        while size <= MAX_TELEMETRY_BYTES:
            chunk = os.read(fd, min(1 << 20, MAX_TELEMETRY_BYTES + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError:
        return None, False
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > MAX_TELEMETRY_BYTES:
        return data[: data.rfind(b"\n", 0, MAX_TELEMETRY_BYTES) + 1], True
    return data, False


def parse_events(data: bytes) -> tuple[list[Any], int]:
    """Valid events in file order, and the number of non-empty lines that were not one."""
    events, malformed = [], 0
    for raw in data.split(b"\n"):
        if not raw.strip():
            continue
        try:
            events.append(_EVENT.validate_python(json.loads(raw.decode("utf-8"))))
        except (ValueError, RecursionError, ValidationError):  # JSON, UTF-8 and pydantic errors are ValueErrors
            malformed += 1
    return events, malformed


def read_telemetry(path: Path) -> Telemetry:
    """Summarise a telemetry file; never raises on its content (the candidate could have written it)."""
    data, truncated = _read_capped(Path(path))
    if data is None:
        return Telemetry(present=False)
    events, malformed = parse_events(data)
    return summarise(events, malformed=malformed, truncated=truncated)


def trained_fingerprints(path: Path, n: int, sample: int) -> set[int] | None:
    """Every n-gram fingerprint the run recorded of what it trained on (events of another ``n`` or
    ``sample`` are ignored; malformed hashes too); None when there is no telemetry file."""
    data, _ = _read_capped(Path(path))
    if data is None:
        return None
    found: set[int] = set()
    for ev in parse_events(data)[0]:
        if isinstance(ev, TrainedTokensEvent) and (ev.n, ev.sample) == (n, sample):
            for token in ev.hashes.split():
                if len(token) == 16:
                    try:
                        found.add(int(token, 16))
                    except ValueError:
                        continue
    return found


def summarise(events: list[Any], *, malformed: int = 0, truncated: bool = False) -> Telemetry:
    """Fold parsed events into a :class:`Telemetry` (pure)."""
    tel = Telemetry(present=True, truncated=truncated, malformed_lines=malformed)
    procs: dict[int, ProcessInfo] = {}
    runs: list[TrainRun] = []
    files: set[str] = set()
    writers: dict[str, set[int]] = {}
    ngrams = 0
    for ev in events:
        proc = procs.setdefault(ev.pid, ProcessInfo(pid=ev.pid))
        if isinstance(ev, StartEvent):
            proc.ppid, proc.argv = ev.ppid, ev.argv
            proc.rank, proc.local_rank, proc.world_size = ev.rank, ev.local_rank, ev.world_size
        elif isinstance(ev, ExitEvent):
            proc.exited, proc.wall_s, proc.uncaught = True, ev.wall_s, ev.uncaught
            proc.peak_rss_mb = max(ev.peak_rss_mb, ev.children_peak_rss_mb)
            proc.cuda_peak_mb = ev.cuda_peak_mb
        elif isinstance(ev, FileReadEvent):
            files.add(ev.path)
        elif isinstance(ev, FileWrittenEvent):
            writers.setdefault(ev.path, set()).add(ev.pid)
        elif isinstance(ev, ModelLoadedEvent):
            tel.models_loaded.append(ev)
        elif isinstance(ev, PeftAppliedEvent):
            tel.peft_configs.append(ev)
        elif isinstance(ev, TrainerInitEvent):
            tel.trainers.append(ev)
        elif isinstance(ev, TrainStartEvent):
            runs.append(
                TrainRun(
                    pid=ev.pid,
                    trainer_id=ev.trainer_id,
                    cls=ev.cls,
                    model_cls=ev.model_cls,
                    trainable_params=ev.trainable_params,
                    total_params=ev.total_params,
                    peft_configs=ev.peft_configs,
                    quantization=ev.quantization,
                    probe=ev.probe,
                )
            )
        elif isinstance(ev, TrainEndEvent):
            open_runs = [r for r in runs if (r.pid, r.trainer_id) == (ev.pid, ev.trainer_id) and not r.ended]
            if open_runs:
                run = open_runs[-1]
                run.ended, run.wall_s, run.global_step, run.error = True, ev.wall_s, ev.global_step, ev.error
                run.trainable_params_end, run.optimizer_params = ev.trainable_params, ev.optimizer_params
                run.quant4_forwards, run.quant4_grad_forwards = ev.quant4_forwards, ev.quant4_grad_forwards
                run.quant4_grad_forwards_in_model = ev.quant4_grad_forwards_in_model
        elif isinstance(ev, LogEvent) and ev.step is not None:
            own = [r for r in runs if (r.pid, r.trainer_id) == (ev.pid, ev.trainer_id)]
            if "loss" in ev.logs:
                tel.losses.append((ev.step, ev.logs["loss"]))
                if own and not own[-1].ended:
                    own[-1].losses.append((ev.step, ev.logs["loss"]))
            if "eval_loss" in ev.logs:
                tel.eval_losses.append((ev.step, ev.logs["eval_loss"]))
                if own:
                    own[-1].eval_losses.append((ev.step, ev.logs["eval_loss"]))
        elif isinstance(ev, TrainedTokensEvent):
            tel.trained_rows += ev.rows
            tel.trained_tokens += ev.tokens
            ngrams += len(ev.hashes.split())
        elif isinstance(ev, DatasetLoadEvent):
            tel.datasets_loaded.append(ev)
        elif isinstance(ev, HookErrorEvent):
            tel.hook_errors.append(f"{ev.module}: {ev.error}")
    tel.processes = list(procs.values())
    tel.files_read = sorted(files)
    tel.files_written = {path: sorted(writers[path]) for path in sorted(writers)}
    tel.trained_ngrams = ngrams
    tel.train_runs = runs
    _fold_processes(tel)
    _choose_run(tel)
    return tel


def _fold_processes(tel: Telemetry) -> None:
    pids = {p.pid for p in tel.processes}
    started = [p for p in tel.processes if p.ppid is not None]
    main = next((p for p in started if p.ppid not in pids), started[0] if started else None)
    if main is not None:
        tel.wall_s, tel.exited = main.wall_s, main.exited
    tel.all_exited = bool(started) and all(p.exited for p in started)
    rss = [p.peak_rss_mb for p in tel.processes if p.peak_rss_mb is not None]
    cuda = [p.cuda_peak_mb for p in tel.processes if p.cuda_peak_mb is not None]
    tel.peak_rss_mb = max(rss) if rss else None
    tel.cuda_peak_mb = max(cuda) if cuda else None


def _choose_run(tel: Telemetry) -> None:
    """Pick the run training the largest share of its parameters, so a later full run is not hidden."""
    counted = [r for r in tel.train_runs if r.trainable_params is not None and r.total_params]
    if counted:
        run = max(counted, key=lambda r: r.trainable_params / r.total_params)
        tel.trainable_params, tel.total_params = run.trainable_params, run.total_params
        match = [t for t in tel.trainers if (t.pid, t.trainer_id) == (run.pid, run.trainer_id)]
        if match:
            tel.trainer = match[-1]
            return
    tel.trainer = tel.trainers[-1] if tel.trainers else None
