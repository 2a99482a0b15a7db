"""The grader's own measurements of a candidate's model: it never trusts the numbers a submission prints.

- :mod:`.loading`: the base model (safetensors only) and a validated LoRA adapter.
- :mod:`.nll`: response-only NLL / perplexity of chat data (the definition candidates must match), and
  the NLL of plain text.
- :mod:`.generation`: greedy decoding, exact match, ROUGE-L.
- :mod:`.preference`: DPO completion log-probabilities, implicit-reward accuracy and margin, per-token KL.
- :mod:`.bootstrap`: confidence intervals and paired base-vs-adapter deltas.

Importing this package does not import torch, transformers or peft; the functions do.
"""

from grader.evaluation.bootstrap import bootstrap_ci, paired_bootstrap_delta
from grader.evaluation.chat import RecordError
from grader.evaluation.generation import encode_prompt, exact_match, greedy_generate, normalise, rouge_l
from grader.evaluation.loading import (
    AdapterConfig,
    AdapterError,
    ModelError,
    adapter_tensors,
    load_adapter,
    load_model,
    load_model_4bit,
    resolve_device,
    validate_adapter_dir,
)
from grader.evaluation.preference import (
    EncodedPair,
    PairLogps,
    PreferenceStats,
    encode_pairs,
    mean_token_kl,
    pair_logps,
    preference_stats,
)
from grader.evaluation.nll import (
    EncodedExample,
    ExampleNLL,
    NLLResult,
    encode_chat,
    encode_phrase,
    encode_text,
    response_nll,
)

__all__ = [
    "AdapterConfig",
    "AdapterError",
    "EncodedExample",
    "EncodedPair",
    "ExampleNLL",
    "ModelError",
    "NLLResult",
    "PairLogps",
    "PreferenceStats",
    "RecordError",
    "adapter_tensors",
    "bootstrap_ci",
    "encode_chat",
    "encode_pairs",
    "encode_phrase",
    "encode_prompt",
    "encode_text",
    "exact_match",
    "greedy_generate",
    "load_adapter",
    "load_model",
    "load_model_4bit",
    "mean_token_kl",
    "normalise",
    "pair_logps",
    "paired_bootstrap_delta",
    "preference_stats",
    "resolve_device",
    "response_nll",
    "rouge_l",
    "validate_adapter_dir",
]
