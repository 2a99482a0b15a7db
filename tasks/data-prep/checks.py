"""Checks of the data-prep task: one function per check id in task.yaml (``runs`` is a library check).

Every check reads the submission's files and the generator's manifest; nothing the submission
says about itself (stats.json included) is believed without being recomputed.
"""

from __future__ import annotations

from collections import Counter

from grader.checks import Artifacts, CandidateFault, CheckContext, Outcome, check, failed, graded, passed, sibling_module

g = sibling_module(__file__, "grading")
SPLIT_TOLERANCE = 0.02
REASONS = ("empty", "non_english", "duplicate", "too_long")


@check("schema-chat")
def schema_chat(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """Chat records: [system,] user, assistant messages with string contents, and a known category."""
    data = g.rows(artifacts, ctx, "main")
    total = sum(len(v) for v in data.values())
    if total == 0:
        return failed("train.jsonl and val.jsonl hold no records")
    bad = [(s, i, p, rec) for s in g.SPLITS for i, rec in enumerate(data[s], 1) if (p := g.chat_problem(rec))]
    if not bad:
        return passed(f"all {total} records are valid chat records", records=total)
    s, i, problem, rec = bad[0]
    return graded(1 - len(bad) / total, f"{len(bad)} of {total} records are malformed; first, {s}.jsonl record {i}: "
                  f"{problem}: {g.short(rec)}", malformed=len(bad), records=total)


@check("schema-alpaca")
def schema_alpaca(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """Alpaca records (instruction, empty input, output, category) holding the chat run's examples and split."""
    data = g.rows(artifacts, ctx, "alpaca")
    total = sum(len(v) for v in data.values())
    if total == 0:
        return failed("the alpaca run wrote no records")
    bad = []
    for s in g.SPLITS:
        for i, r in enumerate(data[s], 1):
            if not isinstance(r, dict) or not all(isinstance(r.get(k), str) for k in ("instruction", "input", "output")):
                bad.append(f"{s}.jsonl record {i}: needs string instruction, input, output: {g.short(r)}")
            elif r["input"] != "" or not r["instruction"].strip() or r.get("category") not in g.CATEGORIES:
                bad.append(f"{s}.jsonl record {i}: input must be \"\", instruction non-empty, category known: {g.short(r)}")
    if bad:
        return graded(0.5 * (1 - len(bad) / total), f"{len(bad)} of {total} alpaca records are malformed; first, {bad[0]}",
                      malformed=len(bad))
    differ = []
    for s in g.SPLITS:
        want = Counter((g.squash(e.user), g.squash(e.assistant)) for e in g.examples(artifacts, ctx) if e.split == s)
        got = Counter((g.squash(r["instruction"]), g.squash(r["output"])) for r in data[s])
        if want != got:
            differ.append(f"{s}: {sum((got - want).values())} alpaca examples not in the chat {s} split, "
                          f"{sum((want - got).values())} chat examples missing")
    if differ:
        return graded(0.5, "alpaca records are well-formed but do not match the chat run: " + "; ".join(differ))
    return passed(f"all {total} alpaca records are valid and match the chat run's split", records=total)


@check("template-renders")
def template_renders(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """Every chat record renders with the task tokenizer's template, with a trainable assistant turn and no markup in the text."""
    results = g.renders(artifacts, ctx)
    bad = []
    for ex, _, n_assistant, error in results:
        marked = [t for t in g.SPECIAL_TOKENS if any(t in m["content"] for m in ex.messages)]
        if error:
            bad.append(f"{g.where(ex)} does not render: {g.short(error, 80)}")
        elif marked:
            bad.append(f"{g.where(ex)} contains the special token {marked[0]} in its text")
        elif n_assistant == 0:
            bad.append(f"{g.where(ex)} has no assistant tokens to train on")
    if bad:
        return graded(1 - len(bad) / len(results), f"{len(bad)} of {len(results)} records fail; first: {bad[0]}", failing=len(bad))
    return passed(f"all {len(results)} records render with the chat template", records=len(results))


@check("no-empty-replies")
def no_empty_replies(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """No record has an empty assistant reply; tickets with null, blank or markup-only replies are dropped."""
    exs, planted = g.examples(artifacts, ctx), g.manifest(ctx)["empty"]
    empty = [e for e in exs if not e.assistant.strip()]
    if empty:
        return failed(f"{len(empty)} records have an empty assistant reply, e.g. {g.where(empty[0])}: "
                      f"{g.short(empty[0].user, 60)}", empty_replies=len(empty))
    users = {g.key(e.user) for e in exs}
    kept = [p for p in planted if g.key(p["user"]) in users]
    if kept:
        return graded(1 - len(kept) / max(1, len(planted)), f"{len(kept)} of {len(planted)} tickets whose reply is empty after "
                      f"cleaning were kept, e.g. {kept[0]['ticket_id']}", kept=[p["ticket_id"] for p in kept])
    return passed(f"no empty replies; all {len(planted)} tickets with empty replies dropped")


@check("english-only")
def english_only(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """Tickets whose lang is not 'en' are dropped, English ones are kept."""
    exs, m = g.examples(artifacts, ctx), g.manifest(ctx)
    users, pairs = {g.key(e.user) for e in exs}, g.pair_counts(exs)
    foreign = [p for p in m["non_english"] if g.key(p["user"]) in users]
    english = m["english_with_foreign_words"]
    lost = [p for p in english if not pairs[g.pair_key(p["user"], p["assistant"])]]
    score = (1 - len(foreign) / max(1, len(m["non_english"]))) * (1 - 0.5 * len(lost) / max(1, len(english)))
    if foreign or lost:
        parts = [f"{len(foreign)} of {len(m['non_english'])} non-English tickets kept"]
        if foreign:
            parts[0] += f" (e.g. {foreign[0]['ticket_id']}, lang {foreign[0]['lang']}: {g.short(foreign[0]['user'], 60)})"
        if lost:
            parts.append(f"{len(lost)} of {len(english)} English tickets (lang en) with a foreign greeting dropped")
        return graded(score, "; ".join(parts), kept_foreign=len(foreign), dropped_english=len(lost))
    return passed(f"all {len(m['non_english'])} non-English tickets dropped, English ones kept")


@check("html-stripped")
def html_stripped(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """No HTML tags or entities remain, and HTML tickets keep their text."""
    exs, planted = g.examples(artifacts, ctx), g.manifest(ctx)["html"]
    left = [(e, t) for e in exs for t in (e.system or "", e.user, e.assistant) if g.TAG.search(t) or g.ENTITY.search(t)]
    if left:
        ex, text = left[0]
        return failed(f"{len(left)} texts still hold HTML tags or entities, e.g. {g.where(ex)}: {g.short(text)}",
                      texts_with_html=len(left))
    have = {(g.squash(e.user), g.squash(e.assistant)) for e in exs}
    missing = [p for p in planted if (g.squash(p["user"]), g.squash(p["assistant"])) not in have]
    if missing:
        return graded(1 - len(missing) / max(1, len(planted)), f"{len(missing)} of {len(planted)} HTML tickets are missing or cleaned "
                      f"wrongly, e.g. {missing[0]['ticket_id']}, expected: {g.short(missing[0]['user'])}",
                      missing=[p["ticket_id"] for p in missing])
    return passed(f"no HTML left; all {len(planted)} HTML tickets cleaned as expected")


@check("pii-redacted")
def pii_redacted(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """E-mail addresses become [EMAIL] and phone numbers [PHONE]; nothing else changes."""
    exs, m = g.examples(artifacts, ctx), g.manifest(ctx)
    texts = [(e, t) for e in exs for t in (e.system or "", e.user, e.assistant)]
    raw = set(m["pii_strings"])
    leaks = [(e, t) for e, t in texts if g.EMAIL.search(t) or g.PHONE.search(t) or any(s in t for s in raw)]
    have = {(g.squash(e.user), g.squash(e.assistant)) for e in exs}
    planted = m["pii"]
    wrong = [p for p in planted if (g.squash(p["user"]), g.squash(p["assistant"])) not in have]
    score = 1 - len(wrong) / max(1, len(planted))
    parts = []
    if leaks:
        score = min(score, 0.5)
        parts.append(f"{len(leaks)} texts still hold an e-mail address or phone number, e.g. {g.where(leaks[0][0])}: "
                     f"{g.short(leaks[0][1])}")
    if wrong:
        parts.append(f"{len(wrong)} of {len(planted)} tickets with PII are missing or redacted wrongly, e.g. "
                     f"{wrong[0]['ticket_id']}, expected: {g.short(wrong[0]['user'])}")
    if parts:
        return graded(score, "; ".join(parts), leaks=len(leaks), wrong=[p["ticket_id"] for p in wrong])
    return passed(f"no PII left; all {len(planted)} tickets with PII redacted as expected")


def _groups_present(exs: list, groups: list[dict]) -> list[tuple[dict, list]]:
    by_pair: dict[tuple[str, str], list] = {}
    for e in exs:
        by_pair.setdefault(g.pair_key(e.user, e.assistant), []).append(e)
    out = []
    for grp in groups:
        v = grp["variants"][0]
        out.append((grp, by_pair.get(g.pair_key(v["user"], v["assistant"]), [])))
    return out


@check("exact-dedup")
def exact_dedup(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """Each group of identical tickets (identical once PII is redacted, too) leaves exactly one example."""
    groups = _groups_present(g.examples(artifacts, ctx), g.manifest(ctx)["exact_dups"])
    bad = [(grp, found) for grp, found in groups if len(found) != 1]
    if bad:
        grp, found = bad[0]
        return graded(1 - len(bad) / max(1, len(groups)), f"{len(bad)} of {len(groups)} duplicate groups do not leave exactly one "
                      f"example, e.g. tickets {', '.join(grp['ticket_ids'])} left {len(found)}",
                      bad_groups=[grp["ticket_ids"] for grp, _ in bad])
    return passed(f"all {len(groups)} exact-duplicate groups collapsed to one example")


@check("near-dedup")
def near_dedup(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """Tickets differing only in case, whitespace or punctuation collapse to the earliest by created_at."""
    groups = _groups_present(g.examples(artifacts, ctx), g.manifest(ctx)["near_dups"])
    scores, notes = [], []
    for grp, found in groups:
        if len(found) != 1:
            scores.append(0.0)
            notes.append(f"tickets {', '.join(grp['ticket_ids'])} left {len(found)} examples")
            continue
        text = (g.squash(found[0].user), g.squash(found[0].assistant))
        kept = [v["ticket_id"] for v in grp["variants"] if (g.squash(v["user"]), g.squash(v["assistant"])) == text]
        scores.append(1.0 if grp["keep"] in kept else 0.5)
        if grp["keep"] not in kept:
            notes.append(f"kept {kept[0] if kept else 'an altered text'} instead of the earliest, {grp['keep']}")
    score = sum(scores) / max(1, len(scores))
    uncollapsed = sum(len(found) != 1 for _, found in groups)
    if uncollapsed * 2 > len(groups):
        return failed(f"{uncollapsed} of {len(groups)} near-duplicate groups do not leave exactly one example; "
                      f"first: {notes[0]}", problems=notes[:10])
    if notes:
        return graded(score, f"{sum(s < 1 for s in scores)} of {len(groups)} near-duplicate groups wrong; first: {notes[0]}",
                      problems=notes[:10])
    return passed(f"all {len(groups)} near-duplicate groups collapsed to their earliest ticket")


@check("length-filter")
def length_filter(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """No example renders to more than max_tokens tokens; too-long tickets are dropped, not truncated; shorter ones stay."""
    max_tokens, m = g.param(ctx, "max_tokens", int), g.manifest(ctx)
    results = g.renders(artifacts, ctx)
    over = [(ex, n) for ex, n, _, err in results if err is None and n > max_tokens]
    if over:
        ex, n = max(over, key=lambda x: x[1])
        return failed(f"{len(over)} records render to more than {max_tokens} tokens, e.g. {g.where(ex)} with {n}",
                      over_limit=len(over))
    kept_long = g.too_long_kept([ex for ex, *_ in results], m)
    if kept_long:
        return failed(f"{len(kept_long)} of {len(m['too_long'])} too-long tickets were kept (shortened?), e.g. "
                      f"{kept_long[0]['ticket_id']}", kept_too_long=[p["ticket_id"] for p in kept_long])
    systems = Counter(ex.system for ex, *_ in results)
    system = systems.most_common(1)[0][0] if systems else None
    tok, pairs = g.tokenizer(ctx), g.pair_counts([ex for ex, *_ in results])
    head = [{"role": "system", "content": system}] if system is not None else []
    fits = [p for p in m["long_allowed"] if g.render(tok, head + [{"role": "user", "content": p["user"]},
                                                                 {"role": "assistant", "content": p["assistant"]}])[0] <= max_tokens]
    lost = [p for p in fits if not pairs[g.pair_key(p["user"], p["assistant"])]]
    if lost:
        return graded(0.5 + 0.5 * (1 - len(lost) / len(fits)), f"{len(lost)} of {len(fits)} long tickets that fit in "
                      f"{max_tokens} tokens were dropped, e.g. {lost[0]['ticket_id']}", dropped=[p["ticket_id"] for p in lost])
    return passed(f"all records within {max_tokens} tokens; {len(m['too_long'])} too-long tickets dropped, "
                  f"{len(fits)} long ones that fit kept")


def _split_counts(artifacts: Artifacts, ctx: CheckContext) -> tuple[int, int, float]:
    data, vf = g.rows(artifacts, ctx, "main"), g.param(ctx, "val_fraction", float)
    n_train, n_val = len(data["train"]), len(data["val"])
    if n_train + n_val == 0:
        raise CandidateFault("train.jsonl and val.jsonl hold no records")
    return n_train, n_val, vf


@check("split-ratio")
def split_ratio(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """val holds val_fraction of the kept examples, within 0.02."""
    n_train, n_val, vf = _split_counts(artifacts, ctx)
    frac = n_val / (n_train + n_val)
    msg = f"val holds {n_val} of {n_train + n_val} examples ({frac:.3f}); asked for {vf} ± {SPLIT_TOLERANCE}"
    ok = abs(frac - vf) <= SPLIT_TOLERANCE + 1e-9
    return (passed if ok else failed)(msg, train=n_train, val=n_val, fraction=round(frac, 4))


@check("stratified")
def stratified(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """Each category's val count is within 1 of val_fraction times its kept examples."""
    _, _, vf = _split_counts(artifacts, ctx)
    counts: dict[str, Counter] = {c: Counter() for c in g.CATEGORIES}
    for ex in g.examples(artifacts, ctx):
        if isinstance(ex.category, str) and ex.category in counts:
            counts[ex.category][ex.split] += 1
    present = {c: n for c, n in counts.items() if sum(n.values())}
    if not present:
        return failed("no record carries a known category")
    off = {c: f"{n['val']} of {n['train'] + n['val']} in val, expected {vf * (n['train'] + n['val']):.1f}"
           for c, n in present.items() if abs(n["val"] - vf * (n["train"] + n["val"])) > 1 + 1e-9}
    table = {c: dict(n) for c, n in present.items()}
    if off:
        first = next(iter(off))
        return graded(1 - len(off) / len(present), f"{len(off)} of {len(present)} categories off by more than 1; "
                      f"{first}: {off[first]}", per_category=table)
    return passed(f"all {len(present)} categories split within 1 of {vf}", per_category=table)


@check("no-leakage")
def no_leakage(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """No example in val duplicates (by the task's key) one in train."""
    exs = g.examples(artifacts, ctx)
    train = {g.pair_key(e.user, e.assistant) for e in exs if e.split == "train"}
    leaks = [e for e in exs if e.split == "val" and g.pair_key(e.user, e.assistant) in train]
    if leaks:
        return failed(f"{len(leaks)} val examples duplicate a train example, e.g. {g.where(leaks[0])}: "
                      f"{g.short(leaks[0].user, 80)}", leaks=len(leaks))
    return passed(f"no val example duplicates a train example ({len(exs)} examples)")


@check("deterministic")
def deterministic(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """The same seed gives byte-identical files; another seed gives the same examples in another split."""
    main, repeat, reseed = (artifacts.require(r) for r in ("main", "repeat", "reseed"))
    for name in ("train.jsonl", "val.jsonl", "stats.json"):
        if g.read_bytes(main / name) != g.read_bytes(repeat / name):
            return failed(f"two runs with the same seed wrote different {name}")
    lines = {d: {s: g.read_bytes(d / f"{s}.jsonl").splitlines() for s in g.SPLITS} for d in (main, reseed)}
    problems = []
    if Counter(lines[main]["train"] + lines[main]["val"]) != Counter(lines[reseed]["train"] + lines[reseed]["val"]):
        problems.append("another seed changed which examples are kept")
    if Counter(lines[main]["val"]) == Counter(lines[reseed]["val"]):
        problems.append("another seed gave the same validation split (is --seed used?)")
    if problems:
        return graded(0.5, "same seed reproduces the files byte for byte, but " + "; ".join(problems))
    return passed("same seed reproduces the files byte for byte; another seed changes only the split")


@check("stats-accurate")
def stats_accurate(artifacts: Artifacts, ctx: CheckContext) -> Outcome:
    """stats.json matches the input and the files written, its counts add up, and each drop is
    counted under its reason: exactly, wherever the grader can tell why a ticket is gone."""
    stats, data = g.read_object(artifacts.require("main") / "stats.json"), g.rows(artifacts, ctx, "main")
    ints = lambda d, ks: isinstance(d, dict) and all(type(d.get(k)) is int and d[k] >= 0 for k in ks)  # noqa: E731
    if not ints(stats, ("input", "kept", "train", "val")) or not ints(stats.get("dropped"), REASONS):
        return failed(f"stats.json lacks non-negative integer input, kept, train, val, dropped.{{{', '.join(REASONS)}}}: "
                      f"{g.short(stats)}")
    n_input, n_train, n_val, dropped = len(g.input_tickets(ctx)), len(data["train"]), len(data["val"]), stats["dropped"]
    known = g.known_drops(g.readable(data), g.manifest(ctx))
    slack = max(0, n_input - n_train - n_val - sum(known.values()))  # dropped for no reason the rules give
    checks = [
        (stats["input"] == n_input, f"input is {stats['input']} but tickets.jsonl has {n_input} tickets"),
        (stats["train"] == n_train, f"train is {stats['train']} but train.jsonl has {n_train} records"),
        (stats["val"] == n_val, f"val is {stats['val']} but val.jsonl has {n_val} records"),
        (stats["kept"] == stats["train"] + stats["val"], f"kept is {stats['kept']}, not train + val"),
        (stats["kept"] + sum(dropped[r] for r in REASONS) == stats["input"], "kept + dropped does not add up to input"),
    ] + [(known[r] <= dropped[r] <= known[r] + slack,
          f"dropped.{r} is {dropped[r]}, but the files written show {known[r]}" + (f" to {known[r] + slack}" if slack else ""))
         for r in REASONS]
    reported = {k: stats[k] for k in ("input", "kept", "train", "val")} | {"dropped": {r: dropped[r] for r in REASONS}}
    wrong = [msg for ok, msg in checks if not ok]
    if wrong:
        return failed("stats.json disagrees with the data: " + "; ".join(wrong), stats=reported, expected_dropped=known)
    return passed(f"stats.json agrees with the input ({n_input} tickets), the files written and the reasons for each drop",
                  stats=reported)
