"""tunegrade run telemetry, recorded from inside the candidate's Python processes.

The grader copies this file into a run's own site folder, mounts it read-only and puts it on
``PYTHONPATH``; Python imports ``sitecustomize`` at startup. Nothing happens unless a file
``tunegrade_telemetry.txt`` beside it names an output file (the environment names none). Then
every Python process of the run (subprocesses inherit ``PYTHONPATH``) appends one JSON object
per line to that file.

Only the standard library is imported here, so ``python -c pass`` stays fast. Hooks on
transformers, peft, datasets and bitsandbytes are installed lazily: a ``sys.meta_path`` finder wraps
the loader of the few modules named in ``_PATCHERS`` and patches them right after they
execute. ``open`` (builtins and io) is wrapped at once to note files opened for reading or
writing; ``safetensors.torch.save_file`` and ``torch.save`` (which write natively, not through
``open``) are wrapped to note the files they write.

Every transformers model, however it is built, is watched for training: each sequence whose
output (logits, a fused head's log-probabilities, the loss) receives a gradient is fingerprinted (``tunegrade_fingerprint``: hashes of its token
n-grams), so the grader can tell which examples were trained on, whatever the training loop.

Each ``Trainer.train`` records how its model's linear layers are quantised (bitsandbytes 4-bit,
other quantised kinds, full precision; LoRA layers on 4-bit bases), and how many forward calls
went through bitsandbytes ``Linear4bit`` layers during it (a class-level counter, no event per call).
A trainer with a ``ref_model`` attribute (DPO-style) also gets a probe (``tunegrade_probe``): a
fixed conversation's per-token log-probabilities under its model and its reference model, as
training starts.

Each process's start event carries torchrun's ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``.

Every hook calls the original first or last and swallows its own errors: the candidate's
program must behave exactly as without telemetry. The event format is documented in
``grader/telemetry/read.py``, which parses it.

This is evidence, not proof: the candidate's code runs in the same process and can undo
hooks or write to the file. The grader cross-checks it with what it measures itself.
"""

# ruff: noqa: BLE001, S110, SIM905  -- a hook must never raise into the candidate's program

import os as _os

CONFIG_FILE = "tunegrade_telemetry.txt"
FINGERPRINT_FILE = "tunegrade_fingerprint.py"
PROBE_FILE = "tunegrade_probe.py"
FORMAT_VERSION = 1
MAX_EVENT_CHARS = 65536
MAX_FILES = 5000
MAX_LOG_EVENTS = 200000
MAX_SCAN_MODULES = 200000  # modules looked at per quantization scan (a 70B model has a few thousand)
FINGERPRINT_FLUSH = 2000  # new hashes per trained_tokens event (about 34,000 characters)
TRAINER_ARGS = """
    learning_rate num_train_epochs max_steps per_device_train_batch_size per_device_eval_batch_size
    gradient_accumulation_steps bf16 fp16 tf32 gradient_checkpointing eval_strategy eval_steps
    save_strategy logging_steps seed data_seed output_dir lr_scheduler_type warmup_steps weight_decay
    optim max_grad_norm use_cpu load_best_model_at_end report_to max_length packing completion_only_loss
    assistant_only_loss dataset_text_field
""".split()  # recorded from TrainingArguments / SFTConfig when present
QUANT_LIBS = """
    bitsandbytes auto_gptq gptqmodel awq hqq optimum quanto torchao eetq fbgemm_gpu aqlm vptq compressed_tensors
    marlin exllama exllamav2 quark spqr_quant fp_quant higgs flute
""".split()  # top-level packages whose Linear-like classes count as quantised
LORA_PARTS = frozenset(
    "lora_A lora_B lora_embedding_A lora_embedding_B lora_magnitude_vector lora_dropout".split()
)  # a LoRA layer's own submodules, never base weights


def _activate(out_path):
    import atexit
    import builtins
    import enum
    import io
    import json
    import sys
    import threading
    import time

    out_path = _os.path.abspath(out_path)
    flags = _os.O_WRONLY | _os.O_APPEND | _os.O_CREAT | getattr(_os, "O_CLOEXEC", 0)
    t0 = time.monotonic()
    local = threading.local()
    counts = {"dropped": 0, "logs": 0}

    def clean(obj, depth=0):
        """A JSON-safe copy: sets become sorted lists, enums their value, the rest str; capped."""
        if obj is None or isinstance(obj, (bool, int, float)):
            return obj
        if isinstance(obj, str):
            return obj[:2000]
        if depth > 6:
            return "..."
        if isinstance(obj, enum.Enum):
            return clean(obj.value, depth + 1)
        if isinstance(obj, dict):
            return {str(k)[:200]: clean(v, depth + 1) for k, v in list(obj.items())[:200]}
        if isinstance(obj, (set, frozenset)):
            items = [clean(v, depth + 1) for v in list(obj)[:200]]
            return sorted(items, key=str)
        if isinstance(obj, (list, tuple)):
            return [clean(v, depth + 1) for v in list(obj)[:200]]
        if isinstance(obj, _os.PathLike):
            return str(_os.fspath(obj))[:2000]
        to_dict = getattr(obj, "to_dict", None)
        if callable(to_dict) and depth < 3:
            try:
                return clean(to_dict(), depth + 1)
            except Exception:
                pass
        return str(obj)[:2000]

    def emit(event, **fields):
        write(event, clean(fields))

    def write(event, fields):
        """Append one event; ``fields`` must already be JSON-safe."""
        try:
            record = {"v": FORMAT_VERSION, "event": event, "pid": _os.getpid(), "t": round(time.time(), 3)}
            record.update(fields)
            line = json.dumps(record, separators=(",", ":"))
            if len(line) > MAX_EVENT_CHARS:
                counts["dropped"] += 1
                return
            data = (line + "\n").encode("utf-8", "replace")
            fd = _os.open(out_path, flags, 0o644)
            try:
                while data:
                    data = data[_os.write(fd, data) :]
            finally:
                _os.close(fd)
        except Exception:
            pass

    def guarded(name):
        """Decorator factory: the hook body runs once per outermost call (nested calls pass through)."""

        def enter():
            depth = getattr(local, name, 0)
            setattr(local, name, depth + 1)
            return depth == 0

        def leave():
            setattr(local, name, getattr(local, name, 1) - 1)

        return enter, leave

    # ---- files opened for reading or writing, files written natively ---------------------------
    skip = tuple(
        p.rstrip("/") + "/"
        for p in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, _os.path.dirname(__file__)}
        if p and len(p) > 1
    ) + ("/proc/", "/sys/", "/dev/")
    seen = set()
    orig_open = builtins.open

    def note_read(file, mode):
        if isinstance(file, int):
            return
        path = _os.fsdecode(_os.fspath(file))
        path = _os.path.abspath(path)
        if path in seen or path.startswith(skip):
            return
        if len(seen) >= MAX_FILES:
            counts["dropped"] += 1
            return
        seen.add(path)
        emit("file_read", path=path, mode=mode)

    written = set()
    # Which process wrote a file is evidence (one rank or all of them?): a forked child starts afresh.
    if hasattr(_os, "register_at_fork"):
        _os.register_at_fork(after_in_child=written.clear)

    def note_written(file, via):
        if isinstance(file, int):
            return
        path = _os.path.abspath(_os.fsdecode(_os.fspath(file)))
        if path in written or path.startswith(("/proc/", "/sys/", "/dev/")):
            return
        if len(written) >= MAX_FILES:
            counts["dropped"] += 1
            return
        written.add(path)
        emit("file_written", path=path, via=via)

    def traced_open(file, mode="r", *args, **kwargs):
        f = orig_open(file, mode, *args, **kwargs)
        try:
            if "r" in mode or "+" in mode:
                note_read(file, mode)
            if any(c in mode for c in "wax+"):
                note_written(file, "open")
        except Exception:
            pass
        return f

    def make_saver(original, via, target_of):
        """Wrap a function writing a file natively; ``target_of(args, kwargs)`` is its path argument
        (a file object is not noted here: it was opened through ``open``)."""
        if getattr(original, "_tunegrade", False):
            return original

        def saver(*args, **kwargs):
            try:
                return original(*args, **kwargs)
            finally:
                try:
                    target = target_of(args, kwargs)
                    if isinstance(target, (str, bytes, _os.PathLike)) and _os.path.exists(target):
                        note_written(target, via)
                except Exception:
                    pass

        _copy_meta(saver, original)
        return saver

    def patch_safetensors_torch(mod):  # save_pretrained writes weights and adapters through it
        mod.save_file = make_saver(
            mod.save_file, "safetensors.torch.save_file", lambda a, k: a[1] if len(a) > 1 else k.get("filename")
        )

    def patch_torch_serialization(mod):  # a path goes to torch's native zip writer, not open()
        mod.save = make_saver(mod.save, "torch.save", lambda a, k: a[1] if len(a) > 1 else k.get("f"))

    try:
        traced_open.__doc__ = orig_open.__doc__
        traced_open.__wrapped__ = orig_open
        builtins.open = traced_open
        io.open = traced_open
    except Exception:
        pass

    # ---- helpers for model facts ---------------------------------------------------------
    def param_counts(model):
        trainable = total = 0
        for p in model.parameters():
            n = p.numel()
            if type(p).__name__ == "Params4bit":  # packed 4-bit storage, as peft counts it
                n = n * 2 * (p.element_size() if hasattr(p, "element_size") else 1)
            total += n
            if p.requires_grad:
                trainable += n
        return trainable, total

    def model_facts(model):
        config = getattr(model, "config", None)
        facts = {
            "cls": type(model).__name__,
            "module": type(model).__module__,
            "name_or_path": getattr(config, "_name_or_path", None) or getattr(model, "name_or_path", None),
        }
        try:
            facts["dtype"] = str(model.dtype)
        except Exception:
            facts["dtype"] = None
        quant = getattr(config, "quantization_config", None)
        facts["quantization_config"] = clean(quant) if quant is not None else None
        return facts

    # ---- quantisation of a trainer's model, and forwards through 4-bit layers -----------------------
    quant4 = {"calls": 0, "grad": 0, "grad_in_model": 0, "watched": frozenset()}

    def is_linear4bit(module):
        """A bitsandbytes 4-bit linear layer (Linear4bit, or its LinearNF4/LinearFP4 subclasses)."""
        return any(
            c.__name__ == "Linear4bit" and c.__module__.startswith("bitsandbytes") for c in type(module).__mro__
        )

    def quantization_facts(model):
        """One capped pass over ``named_modules``: what the base linear layers are (4-bit, other
        quantised, full precision), and which LoRA layers sit on 4-bit ones. Also returns the ids of
        the 4-bit layers (watched by the forward counter)."""
        torch = sys.modules.get("torch")
        linear = getattr(getattr(torch, "nn", None), "Linear", None)
        if model is None or linear is None or not hasattr(model, "named_modules"):
            return None, frozenset()
        head = safe(model.get_output_embeddings) if hasattr(model, "get_output_embeddings") else None
        head_ids = {id(m) for m in head.modules()} if hasattr(head, "modules") else set()
        n4 = other = full = lora = lora4 = lora_trainable = lora_trainable4 = scanned = 0
        quant_types, double, compute, storage = set(), set(), set(), set()
        other_kinds, lora_bases, full_dtypes, examples, ids4 = set(), set(), set(), [], set()
        capped = False
        for name, module in model.named_modules():
            scanned += 1
            if scanned > MAX_SCAN_MODULES:
                capped = True
                break
            cls = type(module)
            origin = cls.__module__ or ""
            parts = name.split(".")
            if is_linear4bit(module):
                n4 += 1
                ids4.add(id(module))
                weight = getattr(module, "weight", None)
                state = getattr(weight, "quant_state", None)
                if state is None:
                    quant_types.add("none")  # not (yet) quantised: quant_state is set when it is
                else:
                    quant_types.add(str(getattr(state, "quant_type", None)))
                    double.add(bool(getattr(state, "nested", False)))
                compute.add(str(getattr(module, "compute_dtype", None)))
                storage.add(str(getattr(weight, "quant_storage", getattr(module, "quant_storage", None))))
            elif (origin.split(".")[0] in QUANT_LIBS and ("Linear" in cls.__name__ or isinstance(module, linear))) or (
                origin.startswith("transformers.integrations.") and "Linear" in cls.__name__
            ):
                other += 1
                other_kinds.add(f"{origin}.{cls.__name__}")
            elif (
                isinstance(module, linear)
                and not origin.startswith("peft")
                and id(module) not in head_ids
                and "lm_head" not in parts
                and not LORA_PARTS.intersection(parts)
            ):
                weight = getattr(module, "weight", None)
                kind = type(weight)
                dtype = getattr(weight, "dtype", None)
                if (kind.__module__ or "").split(".")[0] in QUANT_LIBS or not getattr(dtype, "is_floating_point", True):
                    other += 1  # a plain Linear holding quantised weights (torchao tensor subclasses, int8 ...)
                    other_kinds.add(f"{origin}.{cls.__name__}[{kind.__module__}.{kind.__name__}:{dtype}]")
                else:
                    full += 1
                    full_dtypes.add(str(dtype))
                    if len(examples) < 5:
                        examples.append(name[:200])
            own = getattr(module, "_modules", None)
            if isinstance(own, dict) and "lora_A" in own and "base_layer" in own:
                lora += 1
                base = own["base_layer"]
                for _ in range(8):  # a tuner layer may wrap another one
                    inner = (getattr(base, "_modules", None) or {}).get("base_layer")
                    if inner is None:
                        break
                    base = inner
                on4 = is_linear4bit(base)
                lora4 += on4
                lora_bases.add(type(base).__name__)
                trains = any(
                    p.requires_grad for part in ("lora_A", "lora_B") if part in own for p in own[part].parameters()
                )
                lora_trainable += trains
                lora_trainable4 += trains and on4
        facts = {
            "linear4bit": n4,
            "quant_types": sorted(quant_types),
            "double_quant": sorted(double),
            "compute_dtypes": sorted(compute),
            "quant_storage": sorted(storage),
            "other_quantized": other,
            "other_quantized_kinds": sorted(other_kinds)[:20],
            "full_precision_linear": full,
            "full_precision_dtypes": sorted(full_dtypes),
            "full_precision_examples": examples,
            "lora_layers": lora,
            "lora_on_4bit": lora4,
            "lora_trainable": lora_trainable,
            "lora_trainable_on_4bit": lora_trainable4,
            "lora_base_types": sorted(lora_bases)[:20],
            "modules_scanned": min(scanned, MAX_SCAN_MODULES),
            "capped": capped,
        }
        return facts, frozenset(ids4)

    def patch_bnb_modules(mod):
        cls = mod.Linear4bit
        original = cls.__dict__.get("forward")
        if original is None or getattr(original, "_tunegrade", False):
            return
        grad_enabled = sys.modules["torch"].is_grad_enabled  # bitsandbytes imports torch first

        def forward(self, *args, **kwargs):
            result = original(self, *args, **kwargs)
            try:
                quant4["calls"] += 1
                if grad_enabled():
                    quant4["grad"] += 1
                    if id(self) in quant4["watched"]:
                        quant4["grad_in_model"] += 1
            except Exception:
                pass
            return result

        _copy_meta(forward, original)
        cls.forward = forward

    def peft_configs_of(model):
        configs = getattr(model, "peft_config", None)
        if not isinstance(configs, dict):
            return None
        return {str(k): clean(v) for k, v in configs.items()}

    def safe(fn, *args):
        try:
            return fn(*args)
        except Exception:
            return None

    def wrap_classmethod(cls, attr, after):
        """Replace ``cls.attr`` (a classmethod) by one that calls ``after(cls, args, kwargs, result)``."""
        original = cls.__dict__.get(attr)
        if not isinstance(original, classmethod) or getattr(original.__func__, "_tunegrade", False):
            return
        func = original.__func__
        enter, leave = guarded(f"{cls.__name__}.{attr}")

        def wrapper(klass, *args, **kwargs):
            outer = enter()
            try:
                result = func(klass, *args, **kwargs)
            finally:
                leave()
            if outer:
                try:
                    after(klass, args, kwargs, result)
                except Exception:
                    pass
            return result

        _copy_meta(wrapper, func)
        setattr(cls, attr, classmethod(wrapper))

    # ---- sequences trained on --------------------------------------------------------------
    fingerprint = _load_beside(FINGERPRINT_FILE)
    trained = {"seen": set(), "pending": [], "rows": 0, "tokens": 0, "lock": threading.Lock()}

    def flush_trained():
        with trained["lock"]:
            pending, rows, tokens = trained["pending"], trained["rows"], trained["tokens"]
            if not (pending or rows):
                return
            trained.update(pending=[], rows=0, tokens=0)
        write("trained_tokens", {"n": fingerprint.N, "sample": fingerprint.SAMPLE, "rows": rows, "tokens": tokens,
                                 "hashes": " ".join(f"{h:016x}" for h in pending)})

    def record_trained(rows, masks):
        new = []
        tokens = 0
        for i, row in enumerate(rows):
            if masks is not None:
                row = [t for t, m in zip(row, masks[i]) if m]
            tokens += len(row)
            new.append(fingerprint.fingerprints(row))
        with trained["lock"]:
            trained["rows"] += len(rows)
            trained["tokens"] += tokens
            for hashes in new:
                fresh = hashes - trained["seen"]
                trained["seen"] |= fresh
                trained["pending"].extend(fresh)
            full = len(trained["pending"]) >= FINGERPRINT_FLUSH
        if full:
            flush_trained()

    def graded_output(output):
        """The output a backward pass goes through: the logits, or what a fused head returns instead
        (TRL's per-token log-probabilities), or the loss; None when nothing requires a gradient."""
        fields = [getattr(output, name, None) for name in ("logits", "log_probs", "loss")]
        return next((t for t in fields if getattr(t, "requires_grad", False) and hasattr(t, "register_hook")), None)

    def watch_training(model):
        """Fingerprint each sequence whose output receives a gradient: what the model was trained on,
        whichever loop trained it (Trainer, TRL, a hand-written one); evaluation never backpropagates."""
        torch = sys.modules.get("torch")
        if torch is None or fingerprint is None or getattr(model, "_tunegrade_watched", False):
            return
        model._tunegrade_watched = True

        def after_forward(module, args, kwargs, output):
            try:
                if not torch.is_grad_enabled():
                    return
                ids = kwargs.get("input_ids", args[0] if args else None)
                watched = graded_output(output)
                if watched is None or not hasattr(ids, "tolist"):
                    return
                mask = kwargs.get("attention_mask")
                rows = ids.detach().reshape(-1, ids.shape[-1]).tolist()
                masks = mask.detach().reshape(-1, mask.shape[-1]).tolist() if hasattr(mask, "tolist") else None

                def on_gradient(grad):
                    try:
                        record_trained(rows, masks)
                    except Exception:
                        pass

                watched.register_hook(on_gradient)
            except Exception:
                pass

        model.register_forward_hook(after_forward, with_kwargs=True)

    # ---- transformers.modeling_utils -----------------------------------------------------
    def on_model_loaded(klass, args, kwargs, model):
        facts = model_facts(model)
        requested = kwargs.get("dtype", kwargs.get("torch_dtype"))
        emit(
            "model_loaded",
            via="from_pretrained",
            source=args[0] if args else kwargs.get("pretrained_model_name_or_path"),
            requested_dtype=None if requested is None else str(requested),
            requested_quantization=kwargs.get("quantization_config"),
            device_map=kwargs.get("device_map"),
            num_params=safe(lambda: param_counts(model)[1]),
            **facts,
        )

    def patch_modeling_utils(mod):
        wrap_classmethod(mod.PreTrainedModel, "from_pretrained", on_model_loaded)
        original = mod.PreTrainedModel.post_init
        if getattr(original, "_tunegrade", False):
            return

        def post_init(self, *args, **kwargs):  # the end of every model's __init__, however it was built
            result = original(self, *args, **kwargs)
            try:
                watch_training(self)
            except Exception:
                pass
            return result

        _copy_meta(post_init, original)
        mod.PreTrainedModel.post_init = post_init

    # ---- peft ------------------------------------------------------------------------------
    def peft_event(via, model, config, adapter_name, base=None):
        trainable, total = safe(param_counts, model) or (None, None)
        emit(
            "peft_applied",
            via=via,
            peft_type=clean(getattr(config, "peft_type", None)),
            config=config,
            adapter_name=adapter_name,
            base_cls=type(base).__name__ if base is not None else None,
            base_name_or_path=getattr(getattr(base, "config", None), "_name_or_path", None),
            model_cls=type(model).__name__,
            trainable_params=trainable,
            total_params=total,
        )

    def make_get_peft_model(original):
        if getattr(original, "_tunegrade", False):
            return original
        enter, leave = guarded("get_peft_model")

        def get_peft_model(model, peft_config, *args, **kwargs):
            outer = enter()
            try:
                result = original(model, peft_config, *args, **kwargs)
            finally:
                leave()
            if outer:
                try:
                    name = kwargs.get("adapter_name", args[0] if args else "default")
                    peft_event("get_peft_model", result, peft_config, name, base=model)
                except Exception:
                    pass
            return result

        _copy_meta(get_peft_model, original)
        return get_peft_model

    def patch_peft_mapping_func(mod):
        mod.get_peft_model = make_get_peft_model(mod.get_peft_model)

    def patch_peft_package(mod):
        func = getattr(mod, "get_peft_model", None)
        if func is not None and not getattr(func, "_tunegrade", False):
            mod.get_peft_model = make_get_peft_model(func)

    def on_peft_from_pretrained(klass, args, kwargs, model):
        name = kwargs.get("adapter_name", "default")
        configs = getattr(model, "peft_config", {}) or {}
        base = safe(model.get_base_model)
        peft_event(f"{klass.__name__}.from_pretrained", model, configs.get(name), name, base=base)

    def patch_peft_model(mod):
        wrap_classmethod(mod.PeftModel, "from_pretrained", on_peft_from_pretrained)

    # ---- transformers.trainer ----------------------------------------------------------------
    serial = {"next": 1}
    probe = _load_beside(PROBE_FILE)

    def probe_of(trainer):
        """The probe of a DPO-style trainer (one with a ``ref_model`` attribute, None or not) as it
        starts training; None for others, and None plus a hook_error when it fails."""
        try:
            if not hasattr(trainer, "ref_model"):
                return None
            return probe.probe_trainer(trainer)
        except Exception as exc:
            emit("hook_error", module="tunegrade_probe", error=f"{type(exc).__name__}: {exc}"[:2000])
            return None

    def trainer_key(trainer):
        """A number per trainer, unique in the process: id() is reused once a trainer is freed, and a
        search builds one trainer after another."""
        key = getattr(trainer, "_tunegrade_key", None)
        if key is None:
            key = serial["next"]
            serial["next"] += 1
            try:
                trainer._tunegrade_key = key
            except Exception:
                key = id(trainer)
        return key

    def trainer_facts(trainer):
        args = getattr(trainer, "args", None)
        model = getattr(trainer, "model", None)
        facts = {
            "trainer_id": trainer_key(trainer),
            "cls": type(trainer).__name__,
            "bases": [c.__name__ for c in type(trainer).__mro__[1:] if c.__name__ != "object"][:8],
            "model_cls": type(model).__name__ if model is not None else None,
            "name_or_path": getattr(getattr(model, "config", None), "_name_or_path", None),
        }
        return facts, args, model

    def rows(dataset):
        try:
            return len(dataset) if dataset is not None else None
        except Exception:
            return None

    def patch_trainer(mod):
        trainer_cls = mod.Trainer
        if getattr(trainer_cls.__init__, "_tunegrade", False):
            return
        orig_init, orig_train, orig_log = trainer_cls.__init__, trainer_cls.train, trainer_cls.log
        init_enter, init_leave = guarded("Trainer.__init__")
        train_enter, train_leave = guarded("Trainer.train")

        def __init__(self, *args, **kwargs):
            outer = init_enter()
            try:
                orig_init(self, *args, **kwargs)
            finally:
                init_leave()
            if outer:
                try:
                    facts, targs, model = trainer_facts(self)
                    emit(
                        "trainer_init",
                        args_cls=type(targs).__name__,
                        args={k: getattr(targs, k) for k in TRAINER_ARGS if hasattr(targs, k)},
                        peft_configs=peft_configs_of(model),
                        train_rows=rows(getattr(self, "train_dataset", None)),
                        eval_rows=rows(getattr(self, "eval_dataset", None)),
                        **facts,
                    )
                except Exception:
                    pass

        def train(self, *args, **kwargs):
            outer = train_enter()
            if not outer:
                try:
                    return orig_train(self, *args, **kwargs)
                finally:
                    train_leave()
            probed = probe_of(self)  # before the counters: its forward passes are not training
            start = time.monotonic()
            counted = (quant4["calls"], quant4["grad"], quant4["grad_in_model"])
            watched = quant4["watched"]
            try:
                facts, _, model = trainer_facts(self)
                trainable, total = safe(param_counts, model) or (None, None)
                quantization, ids4 = safe(quantization_facts, model) or (None, frozenset())
                quant4["watched"] = ids4
                fields = clean(
                    dict(
                        trainable_params=trainable,
                        total_params=total,
                        peft_configs=peft_configs_of(model),
                        quantization=quantization,
                        **facts,
                    )
                )
                write("train_start", {**fields, "probe": probed})  # JSON-safe already; clean() would cut its lists
            except Exception:
                pass
            error = None
            try:
                return orig_train(self, *args, **kwargs)
            except BaseException as exc:
                error = type(exc).__name__
                raise
            finally:
                train_leave()
                ended = (quant4["calls"], quant4["grad"], quant4["grad_in_model"])
                quant4["watched"] = watched
                try:
                    model = getattr(self, "model", None)
                    trainable, total = safe(param_counts, model) or (None, None)
                    optimizer = getattr(self, "optimizer", None)
                    opt_params = (
                        safe(lambda: sum(p.numel() for g in optimizer.param_groups for p in g["params"]))
                        if optimizer is not None
                        else None
                    )
                    flush_trained()
                    calls, grad, grad_in_model = (end - begin for end, begin in zip(ended, counted))
                    emit(
                        "train_end",
                        trainer_id=trainer_key(self),
                        wall_s=round(time.monotonic() - start, 3),
                        global_step=safe(lambda: self.state.global_step),
                        trainable_params=trainable,
                        total_params=total,
                        optimizer_params=opt_params,
                        error=error,
                        quant4_forwards=calls,
                        quant4_grad_forwards=grad,
                        quant4_grad_forwards_in_model=grad_in_model,
                    )
                except Exception:
                    pass

        def log(self, logs, *args, **kwargs):
            try:
                if counts["logs"] < MAX_LOG_EVENTS:
                    counts["logs"] += 1
                    numbers = {
                        str(k): v
                        for k, v in dict(logs).items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)
                    }
                    emit(
                        "log",
                        trainer_id=trainer_key(self),
                        step=safe(lambda: self.state.global_step),
                        epoch=safe(lambda: self.state.epoch),
                        logs=numbers,
                    )
                else:
                    counts["dropped"] += 1
            except Exception:
                pass
            return orig_log(self, logs, *args, **kwargs)

        for new, old in ((__init__, orig_init), (train, orig_train), (log, orig_log)):
            _copy_meta(new, old)
        trainer_cls.__init__, trainer_cls.train, trainer_cls.log = __init__, train, log

    # ---- datasets ------------------------------------------------------------------------------
    def make_dataset_loader(original, via):
        if getattr(original, "_tunegrade", False):
            return original
        enter, leave = guarded(via)

        def loader(*args, **kwargs):
            outer = enter()
            try:
                if outer:
                    fields = {"path": args[0] if args else kwargs.get("path", kwargs.get("dataset_path"))}
                    if via == "load_dataset":
                        fields["name"] = args[1] if len(args) > 1 else kwargs.get("name")
                        fields["data_dir"] = args[2] if len(args) > 2 else kwargs.get("data_dir")
                        fields["data_files"] = args[3] if len(args) > 3 else kwargs.get("data_files")
                        fields["split"] = args[4] if len(args) > 4 else kwargs.get("split")
                    emit("dataset_load", via=via, **fields)
            except Exception:
                pass
            try:
                return original(*args, **kwargs)
            finally:
                leave()

        _copy_meta(loader, original)
        return loader

    def patch_datasets(mod):
        for name in ("load_dataset", "load_from_disk"):
            func = getattr(mod, name, None)
            if func is not None:
                setattr(mod, name, make_dataset_loader(func, name))

    # ---- lazy installation ------------------------------------------------------------------------
    patchers = {
        "transformers.modeling_utils": patch_modeling_utils,
        "transformers.trainer": patch_trainer,
        "peft.mapping_func": patch_peft_mapping_func,
        "peft.peft_model": patch_peft_model,
        "peft": patch_peft_package,
        "datasets.load": patch_datasets,
        "datasets": patch_datasets,
        "bitsandbytes.nn.modules": patch_bnb_modules,
        "safetensors.torch": patch_safetensors_torch,
        "torch.serialization": patch_torch_serialization,
    }

    def run_patcher(name, module):
        try:
            patchers[name](module)
        except Exception as exc:
            emit("hook_error", module=name, error=f"{type(exc).__name__}: {exc}")

    class Finder:
        """Finds nothing itself: wraps the real loader of a hooked module to patch it after it runs."""

        def find_spec(self, fullname, path=None, target=None):
            if fullname not in patchers:
                return None
            spec = None
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
            loader = getattr(spec, "loader", None)
            # Shadow exec_module on this loader instance only (never on a class such as BuiltinImporter);
            # the shadow removes itself on first use, so a loader shared by several modules is left intact.
            own = getattr(loader, "__dict__", None)
            if loader is None or isinstance(loader, type) or own is None or "exec_module" in own:
                return spec

            def patched_exec(module):
                try:
                    del loader.exec_module
                except Exception:
                    pass
                loader.exec_module(module)
                if getattr(module, "__name__", None) == fullname:
                    run_patcher(fullname, module)

            try:
                loader.exec_module = patched_exec
            except Exception:
                pass
            return spec

    for name in patchers:
        if name in sys.modules:
            run_patcher(name, sys.modules[name])
    sys.meta_path.insert(0, Finder())

    # ---- process start and exit -------------------------------------------------------------------------
    uncaught = []
    orig_excepthook = sys.excepthook

    def excepthook(kind, value, tb):
        try:
            uncaught.append(kind.__name__)
        except Exception:
            pass
        return orig_excepthook(kind, value, tb)

    sys.excepthook = excepthook

    def at_exit():
        try:
            flush_trained()
        except Exception:
            pass
        try:
            import resource

            scale = 1 / (1 << 20) if sys.platform == "darwin" else 1 / 1024
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
            children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale
            cuda_peak = cuda_reserved = None
            torch = sys.modules.get("torch")
            cuda = getattr(torch, "cuda", None)
            if cuda is not None and safe(cuda.is_initialized):
                devices = range(cuda.device_count())
                cuda_peak = sum(cuda.max_memory_allocated(d) for d in devices) / (1 << 20)
                cuda_reserved = sum(cuda.max_memory_reserved(d) for d in devices) / (1 << 20)
            emit(
                "exit",
                wall_s=round(time.monotonic() - t0, 3),
                peak_rss_mb=round(rss, 1),
                children_peak_rss_mb=round(children, 1),
                cuda_peak_mb=None if cuda_peak is None else round(cuda_peak, 1),
                cuda_reserved_peak_mb=None if cuda_reserved is None else round(cuda_reserved, 1),
                uncaught=uncaught[-1] if uncaught else None,
                dropped=counts["dropped"],
            )
        except Exception:
            pass

    atexit.register(at_exit)

    def env_int(name):
        try:
            return int(_os.environ[name])
        except (KeyError, ValueError):
            return None

    emit(
        "start",
        ppid=_os.getppid(),
        argv=list(getattr(sys, "orig_argv", sys.argv))[:50],
        cwd=safe(_os.getcwd),
        python=sys.executable,
        rank=env_int("RANK"),
        local_rank=env_int("LOCAL_RANK"),
        world_size=env_int("WORLD_SIZE"),
    )


def _copy_meta(wrapper, original):
    """Like functools.wraps (name, doc, __wrapped__ for inspect.signature), plus our marker."""
    for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
        try:
            setattr(wrapper, attr, getattr(original, attr))
        except Exception:
            pass
    try:
        wrapper.__dict__.update(getattr(original, "__dict__", {}))
    except Exception:
        pass
    wrapper.__wrapped__ = original
    wrapper._tunegrade = True


def _chain_next_sitecustomize():
    """Run the sitecustomize this file shadows (if any), so the environment behaves as before."""
    import sys
    from importlib.machinery import PathFinder

    here = _os.path.dirname(_os.path.abspath(__file__))
    rest = [p for p in sys.path if _os.path.abspath(p or ".") != here]
    spec = PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None or spec.origin == __file__:
        return
    from importlib.util import module_from_spec

    module = module_from_spec(spec)
    spec.loader.exec_module(module)


def _here(name):
    return _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), name)


def _load_beside(filename):
    """A helper module beside this file, loaded by path: nothing on sys.path can shadow it."""
    try:
        import importlib.util

        spec = importlib.util.spec_from_file_location("_" + _os.path.splitext(filename)[0], _here(filename))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    except Exception:
        return None


def _configured_output():
    try:
        with open(_here(CONFIG_FILE), encoding="utf-8") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


_output = _configured_output()
if _output:
    try:
        _activate(_output)
    except Exception:
        pass
try:
    _chain_next_sitecustomize()
except Exception:
    pass
