"""Loading the task's base model and a candidate's LoRA adapter, trusting nothing the candidate wrote.

A candidate's adapter folder is hostile input. The order of operations is what makes it safe:

1. ``adapter_config.json`` is read as plain JSON (size-capped) and validated by :class:`AdapterConfig`
   before PEFT sees it, so a wrong ``peft_type`` or ``task_type`` is a one-line message, not a PEFT
   traceback, and configs that would make PEFT rewrite the base weights while loading are refused.
2. Weights must be ``adapter_model.safetensors``. Any pickle-format file (``*.bin``, ``*.pt``, ...)
   is refused by its *name*, before anything opens it: unpickling runs arbitrary code, and PEFT
   falls back to ``adapter_model.bin`` when the safetensors file is missing.
3. Only then does PEFT load it; every tensor in the file must land in the model and every LoRA
   tensor the config implies must be in the file, or the adapter is refused (PEFT itself only warns).

Every refusal is an :class:`AdapterError`, a ``CandidateFault``: the check that loads the adapter
fails with its message. A missing or unusable *base* model is the grader's problem
(:class:`ModelError`, an ``InfraFault``).

torch, transformers and peft are imported inside the functions so importing the grader stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator

from grader.checks.base import CandidateFault, InfraFault, parse_json
from grader.evaluation.formats import PICKLE_SUFFIXES
from grader.schema import describe

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
MAX_ADAPTER_CONFIG_BYTES = 1024 * 1024

STANDARD_LORA_INITS = (True, False, "gaussian")
"""``init_lora_weights`` values that leave the base weights alone when PEFT builds the adapter.
PiSSA, OLoRA, CorDA, LoftQ, EVA, ... re-initialise or rewrite base weights inside PEFT's loader,
so an unconverted adapter of that kind is not "base + LoRA" at all."""


class AdapterError(CandidateFault):
    """The candidate's adapter is invalid; the message says what and how to fix it."""


class ModelError(InfraFault):
    """The base model folder cannot be loaded; the grader's (task's) fault, never the candidate's."""


class AdapterConfig(BaseModel):
    """The part of PEFT's ``adapter_config.json`` the grader relies on.

    Unknown keys are allowed: PEFT writes dozens and adds more in every release.
    """

    model_config = ConfigDict(extra="allow")

    peft_type: Literal["LORA"]
    """Only LoRA adapters are graded."""
    task_type: Literal["CAUSAL_LM"]
    """The adapter must wrap a causal LM; other task types build other PEFT wrappers."""
    r: StrictInt = Field(gt=0)
    """The LoRA rank."""
    target_modules: list[str] | str
    """Module names (or one regex) the adapter attaches to; must name something."""
    init_lora_weights: bool | str = True
    """See :data:`STANDARD_LORA_INITS`."""
    megatron_config: dict[str, Any] | None = None
    """Must stay unset: it makes PEFT import the module named in ``megatron_core``."""

    @field_validator("target_modules")
    @classmethod
    def _names_something(cls, value: list[str] | str) -> list[str] | str:
        if not value or (isinstance(value, list) and not all(value)):
            raise ValueError("must name at least one module")
        return value

    @field_validator("init_lora_weights")
    @classmethod
    def _standard_init(cls, value: bool | str) -> bool | str:
        if value not in STANDARD_LORA_INITS:
            raise ValueError(
                f"{value!r} rewrites the base weights when loaded; save a converted standard LoRA adapter "
                "(init_lora_weights true)"
            )
        return value

    @field_validator("megatron_config")
    @classmethod
    def _no_megatron(cls, value: dict[str, Any] | None) -> None:
        if value is not None:
            raise ValueError("must be null; Megatron tensor-parallel adapters are not supported")


def resolve_device(device: str) -> str:
    """``"auto"`` → ``"cuda"`` when a GPU is visible, else ``"cpu"``; anything else is passed through."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_model(
    model_dir: str | Path,
    device: str = "auto",
    dtype: torch.dtype | str | None = None,
    tokenizer_dir: str | Path | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a local causal LM and its tokenizer, in eval mode, from safetensors only.

    ``dtype=None`` means float32: the reproducible choice, and the one in which merging a LoRA
    adapter is exact. Pass ``torch.bfloat16`` for speed on a GPU. The tokenizer comes from
    ``tokenizer_dir`` when given (the task's shared tokenizer), else from ``model_dir``.
    Nothing is fetched from a hub and no repository code runs (``trust_remote_code=False``).

    Raises :class:`ModelError` when the folder, its config or its safetensors weights are missing.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _model_folder(model_dir)
    torch_dtype = _dtype(dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, trust_remote_code=False, use_safetensors=True, dtype=torch_dtype
        )
        tokenizer = AutoTokenizer.from_pretrained(
            Path(tokenizer_dir) if tokenizer_dir is not None else path, local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot load: {exc}") from exc
    model.to(resolve_device(device))
    model.eval()
    return model, tokenizer


def load_model_4bit(
    model_dir: str | Path, device: str = "auto", tokenizer_dir: str | Path | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a local causal LM as QLoRA trains on it: bitsandbytes 4-bit NF4 with double quantisation,
    computing in float32 on the CPU and bfloat16 on a GPU (what the QLoRA task asks candidates for).

    The quantised weights are rounded to 4 bits at load time, deterministically: the same base gives
    the same model on every load. Add an adapter with ``load_adapter(..., merge=False)``: merging into
    4-bit weights would round the LoRA delta away. Same refusals as :func:`load_model`.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    path = _model_folder(model_dir)
    target = resolve_device(device)
    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if target == "cuda" else torch.float32,
    )
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, trust_remote_code=False, use_safetensors=True, dtype=torch.float32,
            quantization_config=quantization, device_map={"": 0 if target == "cuda" else target},
        )
        tokenizer = AutoTokenizer.from_pretrained(
            Path(tokenizer_dir) if tokenizer_dir is not None else path, local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError, ImportError) as exc:
        raise ModelError(f"{path}: cannot load in 4-bit: {exc}") from exc
    model.eval()
    return model, tokenizer


def _model_folder(model_dir: str | Path) -> Path:
    path = Path(model_dir)
    if not path.is_dir():
        raise ModelError(f"{path}: no such model directory")
    if not (path / "config.json").is_file():
        raise ModelError(f"{path}: no config.json")
    if not any(path.glob("*.safetensors")):
        raise ModelError(f"{path}: no *.safetensors weights (pickle-format checkpoints are never loaded)")
    return path


def _dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        value = getattr(torch, dtype, None)
        if not isinstance(value, torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}")
        return value
    return dtype


def validate_adapter_dir(adapter_dir: str | Path) -> AdapterConfig:
    """Every check that needs no weights: folder, config, file formats. Returns the parsed config.

    Never opens a pickle-format file; reading the config is bounded in size.
    """
    path = Path(adapter_dir)
    if not path.is_dir():
        raise AdapterError(f"{path.name}: the adapter directory was not written")
    config = _read_config(path)
    refused = sorted(p.name for p in path.iterdir() if p.name.lower().endswith(PICKLE_SUFFIXES))
    if refused:
        raise AdapterError(
            f"{refused[0]}: pickle-format weights are refused (loading them can run code); "
            f"save the adapter as {ADAPTER_WEIGHTS_FILE} (save_pretrained(..., safe_serialization=True))"
        )
    _regular_file(path, ADAPTER_WEIGHTS_FILE, hint="save_pretrained(..., safe_serialization=True) writes it")
    _ranks_stored(path, config)
    return config


def _ranks_stored(path: Path, config: AdapterConfig) -> None:
    """PEFT allocates every LoRA matrix at the config's rank before it reads the file: a config
    claiming a rank no stored tensor has would make the grader allocate whatever it says."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path / ADAPTER_WEIGHTS_FILE), framework="pt", device="cpu") as fh:
            stored = [fh.get_slice(n).get_shape()[0] for n in fh.keys() if "lora_A" in n]
    except (SafetensorError, IndexError) as exc:
        raise AdapterError(f"{ADAPTER_WEIGHTS_FILE}: not a valid safetensors file ({exc})") from None
    pattern = (config.model_extra or {}).get("rank_pattern") or {}
    if not isinstance(pattern, dict):
        raise AdapterError(f"{ADAPTER_CONFIG_FILE}: rank_pattern must be an object of module: rank")
    claimed = max([config.r, *(v for v in pattern.values() if isinstance(v, int))])
    if stored and claimed > max(stored):
        raise AdapterError(f"{ADAPTER_CONFIG_FILE}: rank {claimed} exceeds every rank stored in "
                           f"{ADAPTER_WEIGHTS_FILE} (largest {max(stored)})")


def _read_config(path: Path) -> AdapterConfig:
    file = _regular_file(path, ADAPTER_CONFIG_FILE, hint="save the adapter with save_pretrained()")
    if file.stat().st_size > MAX_ADAPTER_CONFIG_BYTES:
        raise AdapterError(f"{ADAPTER_CONFIG_FILE}: larger than {MAX_ADAPTER_CONFIG_BYTES} bytes")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise AdapterError(f"{ADAPTER_CONFIG_FILE}: not UTF-8") from None
    try:
        data = parse_json(text, ADAPTER_CONFIG_FILE)
    except CandidateFault as exc:
        raise AdapterError(str(exc)) from None
    if not isinstance(data, dict):
        raise AdapterError(f"{ADAPTER_CONFIG_FILE}: expected a JSON object, got {type(data).__name__}")
    try:
        return AdapterConfig.model_validate(data)
    except ValidationError as exc:
        raise AdapterError(f"{ADAPTER_CONFIG_FILE}: {describe(exc)}") from None


def _regular_file(folder: Path, name: str, hint: str) -> Path:
    """``folder/name`` as a regular file; a symlink could point the grader at anything (``/dev/zero``)."""
    file = folder / name
    if file.is_symlink():
        raise AdapterError(f"{name}: is a symbolic link; write a regular file")
    if not file.is_file():
        raise AdapterError(f"{name}: missing; {hint}")
    return file


def adapter_tensors(adapter_dir: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of ``adapter_model.safetensors`` by name, on the CPU, for checks on the weights
    themselves ("only LoRA tensors", "lora_B is not all zeros"). safetensors never runs code."""
    from safetensors import SafetensorError, safe_open

    file = _regular_file(Path(adapter_dir), ADAPTER_WEIGHTS_FILE, hint="no adapter weights to inspect")
    try:
        with safe_open(str(file), framework="pt", device="cpu") as fh:
            return {name: fh.get_tensor(name) for name in fh.keys()}
    except SafetensorError as exc:
        raise AdapterError(f"{ADAPTER_WEIGHTS_FILE}: not a valid safetensors file ({exc})") from None


def load_adapter(model: PreTrainedModel, adapter_dir: str | Path, merge: bool = True) -> Any:
    """Apply a candidate's LoRA adapter to ``model`` after :func:`validate_adapter_dir` accepted it.

    With ``merge=True`` the LoRA deltas are folded into the base weights (``merge_and_unload``) and a
    plain model comes back, which runs as fast as the base. In float32 this is exact up to rounding
    (~1e-6); it is *not* exact in bf16/fp16 (the merged weight is rounded to the low precision,
    unlike the unmerged path) and not possible losslessly on quantized bases (4/8-bit), which need
    ``merge=False``. With ``merge=False`` the ``PeftModel`` wrapper comes back.

    PEFT injects the adapter into ``model`` itself: afterwards ``model`` no longer is the base
    model. Load the base again for base-vs-adapter comparisons (or use ``merge=False`` and
    ``with peft_model.disable_adapter():``).
    """
    import torch
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict
    from safetensors import SafetensorError

    path = Path(adapter_dir).resolve()
    validate_adapter_dir(path)
    in_file = set(_tensor_names(path))
    try:
        peft_model = PeftModel.from_pretrained(model, str(path), is_trainable=False)
    except torch.OutOfMemoryError:
        raise
    except (ValueError, KeyError, RuntimeError, TypeError, SafetensorError) as exc:
        raise AdapterError(f"the adapter does not fit the base model: {_first_line(exc)}") from None
    expected = set(get_peft_model_state_dict(peft_model))
    _same_tensors(in_file, expected)
    peft_model.eval()
    if not merge:
        return peft_model
    merged = peft_model.merge_and_unload()
    merged.eval()
    return merged


def _tensor_names(path: Path) -> list[str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path / ADAPTER_WEIGHTS_FILE), framework="pt", device="cpu") as fh:
            return list(fh.keys())
    except SafetensorError as exc:
        raise AdapterError(f"{ADAPTER_WEIGHTS_FILE}: not a valid safetensors file ({exc})") from None


def _same_tensors(in_file: set[str], expected: set[str]) -> None:
    """PEFT loads with ``strict=False``: a missing tensor stays at its initial value (lora_B = 0, a
    silent no-op) and an extra one is dropped. Either means the file and the config disagree."""
    missing, extra = sorted(expected - in_file), sorted(in_file - expected)
    if missing:
        raise AdapterError(
            f"{ADAPTER_WEIGHTS_FILE}: {len(missing)} tensor(s) the config implies are missing, e.g. {missing[0]}"
        )
    if extra:
        raise AdapterError(
            f"{ADAPTER_WEIGHTS_FILE}: {len(extra)} tensor(s) match no adapted module of the base model, e.g. {extra[0]}"
        )


def _first_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line`` of a PEFT/torch error, plus the next line when the first only introduces
    it (``Error(s) in loading state_dict ...:`` is followed by the size mismatch that matters)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = " ".join(lines[:2]) if len(lines) > 1 and lines[0].endswith(":") else (lines[0] if lines else "")
    return f"{type(exc).__name__}: {text[:limit]}"
