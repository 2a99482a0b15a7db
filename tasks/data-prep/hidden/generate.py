"""Data generator of the data-prep task: messy customer-support tickets with planted cases.

``generate(dest, seed, assets)`` writes ``dest/raw/tickets.jsonl`` and returns the manifest of
what it planted, which the checks use. Everything derives from ``seed`` through one
``random.Random``; the global random state is never touched. Stdlib only.

Each planted removal has exactly one cause under the task's rules, so the expected counts
are exact. Lengths are measured with the task tokenizer (``assets["tokenizer"]``) on the
ChatML rendering of the cleaned user and assistant turns: ordinary tickets stay at most
ORDINARY_MAX tokens (room for a 100-token system message under max_tokens 256), the
"long but allowed" ones fall in LONG_ALLOWED, the too-long ones exceed TOO_LONG_MIN.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

MANIFEST_VERSION = 2  # 2: too-long tickets listed with their full cleaned texts
MAX_TOKENS = 256
ORDINARY_MAX = 125  # tokens of the rendered user+assistant turns, no system message
LONG_ALLOWED = (165, 195)  # kept with max_tokens 256 and a system message of up to 60 tokens
TOO_LONG_MIN = 4 * MAX_TOKENS
CATEGORIES = ("billing", "shipping", "account", "technical", "returns")
WEIGHTS = (30, 25, 20, 15, 10)
START = datetime(2024, 1, 1, tzinfo=timezone.utc)
OFFSETS = (0, 0, 0, 120, -300, 330, 60)  # minutes east of UTC

NAMES = ["Alex", "Maria", "John", "Priya", "Chen", "Fatima", "Lukas", "Sofia", "Omar", "Emma", "Kenji", "Ana", "Liam", "Zoe"]
PRODUCTS = ["wireless headphones", "laptop stand", "coffee grinder", "running shoes", "phone case", "desk lamp",
            "backpack", "smart watch", "blender", "office chair", "keyboard", "monitor", "kettle", "webcam"]
CARRIERS = ["UPS", "FedEx", "DHL", "USPS"]
OPENERS = ["Hi,", "Hello,", "Good morning,", "Hey there,", "Dear support team,", ""]
CLOSERS = ["Thanks.", "Thank you!", "Please help.", "Regards, {name}", "", "Cheers, {name}"]
ASKS = {
    "billing": ["I was charged twice for order #{order}.", "My invoice for order #{order} shows ${amount}, not ${amount2}.",
                "Can you refund the extra ${amount} on my card?", "My subscription renewed on {day} without notice.",
                "Payment for order #{order} failed but the money left my account.", "I need a copy of the invoice for order #{order}."],
    "shipping": ["My {product} from order #{order} has not arrived.", "Tracking for order #{order} has not moved in {n} days.",
                 "{carrier} says order #{order} was delivered but I never got it.", "Can I change the address for order #{order}?",
                 "The box for order #{order} arrived damaged.", "Express shipping for order #{order} took {n} days."],
    "account": ["I cannot log in since {day}.", "The password reset link expired {n} times now.",
                "How do I change the e-mail on my account? My order was #{order}.", "My account was locked after {n} attempts.",
                "Please delete my account, last order #{order}.", "Login codes stopped arriving on {day}."],
    "technical": ["The app crashes when I open order #{order}.", "My {product} will not pair over Bluetooth.",
                  "I get error E{code} at checkout for order #{order}.", "The site takes {n} seconds to load on my phone.",
                  "The firmware update for my {product} stopped at {pct} percent.", "Notifications stopped after update {n}.{pct}."],
    "returns": ["I want to return the {product} from order #{order}.", "Where do I print the return label for order #{order}?",
                "I sent the {product} back {n} days ago and have no refund.", "Can I exchange the {product} for another size?",
                "The return window for order #{order} shows closed after {n} days.", "Is return shipping free for a broken {product}?"],
}
DETAILS = ["This is the second time this happens.", "I ordered it on {day}.", "It was a gift for {name2}.",
           "I already tried restarting.", "Your chat bot could not help.", "The total was ${amount}."]
REPLIES = {
    "billing": ["I refunded ${amount} to your card; it shows in {n} business days.", "The duplicate charge on order #{order} is cancelled.",
                "I attached the invoice for order #{order}.", "Auto-renewal is now off and the ${amount} charge is refunded."],
    "shipping": ["I asked {carrier} to trace order #{order}.", "A replacement {product} ships today at no cost.",
                 "The new address is saved for order #{order}.", "Order #{order} is at the local depot and arrives in {n} days."],
    "account": ["I unlocked your account; please set a new password.", "A fresh reset link is on its way and lasts {n} hours.",
                "Your account deletion is scheduled within {n} days.", "I switched your login codes to the authenticator app."],
    "technical": ["Please update to version {n}.{pct}, which fixes this crash.", "Hold the pairing button for {n} seconds, then retry.",
                  "Our engineers fixed error E{code}; please try again.", "Please clear the app cache and restart your {product}."],
    "returns": ["Your return label for order #{order} is attached.", "The refund of ${amount} was issued today.",
                "I approved the exchange; the new {product} ships in {n} days.", "I reopened the return window for {n} days."],
}
REPLY_OPEN = ["Hi {name},", "Hello {name},", "Thanks for reaching out, {name}.", "Sorry about that, {name}.", ""]
REPLY_CLOSE = ["Anything else I can do?", "Have a great day!", "Best regards, Support", ""]
FOREIGN_GREETINGS = ["Hola!", "Danke schon.", "Merci,", "Ciao!", "Obrigado."]
LONG_EXTRA = ["I have been a loyal customer for {n} years and never had a problem like this before.",
              "I called twice and waited on hold for over {n} minutes each time without reaching anyone.",
              "My neighbour ordered the same {product} on the same day and already received it.",
              "I would appreciate a clear answer on what happens next and when.",
              "The order confirmation said it would arrive within three days, which has long passed."]
FOREIGN = {  # lang: (customer messages, agent replies)
    "es": (["Hola, mi pedido #{order} no ha llegado todavía.", "Me cobraron dos veces el pedido #{order}.",
            "No puedo entrar en mi cuenta, mi último pedido es #{order}."],
           ["Hola {name}, lo sentimos mucho. Ya hemos abierto una investigación.", "Hemos devuelto el importe a su tarjeta."]),
    "de": (["Guten Tag, meine Bestellung #{order} ist noch nicht angekommen.",
            "Ich möchte den Artikel aus Bestellung #{order} zurückgeben.", "Mein Passwort funktioniert nicht, Kundennummer #{order}."],
           ["Hallo {name}, wir haben die Rückerstattung veranlasst.", "Das Rücksendeetikett ist im Anhang."]),
    "fr": (["Bonjour, ma commande #{order} est arrivée endommagée.", "Je voudrais un remboursement pour la commande #{order}.",
            "Mon compte est bloqué depuis la commande #{order}."],
           ["Bonjour {name}, nous sommes désolés pour ce problème.", "Le remboursement sera visible sous {n} jours."]),
    "pt": (["Olá, não consigo acessar minha conta desde o pedido #{order}.", "Meu pedido #{order} ainda não chegou."],
           ["Olá {name}, já enviamos um novo link de acesso.", "O reembolso foi processado hoje."]),
    "it": (["Buongiorno, vorrei restituire il prodotto dell'ordine #{order}.", "L'ordine #{order} non è ancora arrivato."],
           ["Gentile {name}, il rimborso è stato emesso.", "Abbiamo inviato l'etichetta di reso."]),
    "nl": (["Hallo, mijn bestelling #{order} is nog niet geleverd.", "Ik wil de bestelling #{order} annuleren."],
           ["Beste {name}, uw bestelling is onderweg.", "De terugbetaling is vandaag verwerkt."]),
}
EMAIL_USERS = ["maria.garcia", "j.smith", "PRIYA_K", "chen.wei+orders", "o.haddad", "emma1987", "k.tanaka"]
EMAIL_DOMAINS = ["example.com", "mail.example.org", "Example.COM", "shop.example.net", "inbox.example.co.uk"]
PHONE_FORMATS = ["+1 {a}-{b}-{c}", "({a}) {b}-{c}", "{a}.{b}.{c}", "{a}-{b}-{c}", "+1 ({a}) {b}-{c}"]
PII_USER = ["You can reach me at {E} or {P}.", "My e-mail is {E}, please write there.", "Call me on {P} after 5pm.",
            "Please send the receipt to {E}.", "My number changed to {P}, and my e-mail is {E}."]
PII_REPLY = ["You can also call our desk at {P}.", "We sent the details to {E}.", "I will call you back on {P} today."]
HTML_EXTRA = ["I don't see it under \"My Orders\" & Returns.", "It's urgent & I'm travelling.",
              "The fee was < $5 last time.", "Shipping & handling looked wrong."]
EMPTY_REPLIES = [None, "", "   ", " \n\t ", "<p>&nbsp;</p>", "<br/>", "<div> </div>"]


def generate(dest: Path, seed: str, assets: dict[str, Path]) -> dict[str, Any]:
    """Write dest/raw/tickets.jsonl for ``seed``; return the manifest of planted cases."""
    rng = random.Random(int.from_bytes(hashlib.sha256(seed.encode("utf-8")).digest()[:8], "big"))
    if "tokenizer" not in assets:
        raise ValueError("generate() needs assets['tokenizer']: lengths are measured with the task tokenizer")
    gen = _Generator(rng, _token_counter(Path(assets["tokenizer"])))
    manifest = gen.build()
    raw = Path(dest) / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    with (raw / "tickets.jsonl").open("w", encoding="utf-8", newline="\n") as fh:
        for t in gen.tickets:
            row = {k: t[k] for k in ("ticket_id", "category", "created_at", "lang", "customer_message", "agent_reply")}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return manifest


def _token_counter(tokenizer_dir: Path) -> Callable[[str, str], int]:
    """Tokens of the ChatML rendering of one user and one assistant turn (as the chat template renders it)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))

    def count(user: str, assistant: str) -> int:
        text = f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{assistant}<|im_end|>\n"
        return len(tok.encode(text, add_special_tokens=False).ids)

    return count


def key(text: str) -> str:
    """The task's duplicate key: lower-cased, punctuation removed, whitespace collapsed."""
    return " ".join(re.sub(r"[^\w\s]", "", text.lower()).split())


class _Generator:
    def __init__(self, rng: random.Random, count: Callable[[str, str], int]) -> None:
        self.rng = rng
        self.count = count
        self.tickets: list[dict[str, Any]] = []
        self.pair_keys: set[tuple[str, str]] = set()
        self.user_keys: set[str] = set()
        self.reply_keys: set[str] = set()
        self.orders: set[int] = set()

    # -- text ------------------------------------------------------------------------------
    def _values(self) -> dict[str, Any]:
        r = self.rng
        order = r.randint(100000, 999999)
        while order in self.orders:
            order = r.randint(100000, 999999)
        self.orders.add(order)
        return {"order": order, "amount": f"{r.randint(5, 400)}.{r.randint(0, 99):02d}",
                "amount2": f"{r.randint(5, 400)}.{r.randint(0, 99):02d}", "product": r.choice(PRODUCTS),
                "carrier": r.choice(CARRIERS), "n": r.randint(2, 30), "pct": r.randint(1, 99), "code": r.randint(100, 999),
                "day": r.choice(["Monday", "Tuesday", "Friday", "March 3", "May 12", "the weekend"]),
                "name": r.choice(NAMES), "name2": r.choice(NAMES)}

    def _english(self, category: str, extra: int = 0, lo: int = 0, hi: int = ORDINARY_MAX,
                 fresh_reply: bool = False) -> tuple[str, str]:
        """A clean (user, reply) pair, unique by key, of lo..hi tokens; ``extra`` adds sentences.

        With ``fresh_reply`` no ticket drawn so far has a reply of the same key either.
        """
        r = self.rng
        for _ in range(1000):
            v = self._values()
            user = [r.choice(OPENERS), r.choice(ASKS[category])]
            user += r.sample(DETAILS, 1) if r.random() < 0.5 else []
            user += r.sample(LONG_EXTRA, extra) + [r.choice(CLOSERS)]
            reply = [r.choice(REPLY_OPEN), r.choice(REPLIES[category])]
            reply += r.sample(LONG_EXTRA[3:], min(extra, 1)) + r.sample(REPLIES[category], min(extra, 2)) + [r.choice(REPLY_CLOSE)]
            u = " ".join(s for s in user if s).format(**v)
            a = " ".join(s for s in reply if s).format(**v)
            unique = (key(u), key(a)) not in self.pair_keys and key(u) not in self.user_keys
            if unique and not (fresh_reply and key(a) in self.reply_keys) and lo <= self.count(u, a) <= hi:
                return u, a
        raise RuntimeError("could not draw a unique ticket")

    def _add(self, category: str, user: str, reply: str | None, kind: str, raw_user: str | None = None,
             raw_reply: str | None = ..., lang: str = "en", unique: bool = True) -> dict[str, Any]:
        t = {"category": category, "lang": lang, "customer_message": raw_user if raw_user is not None else user,
             "agent_reply": reply if raw_reply is ... else raw_reply, "user": user, "assistant": reply, "kind": kind}
        self.reply_keys.add(key(reply or ""))
        if unique:
            self.user_keys.add(key(user))
            self.pair_keys.add((key(user), key(reply or "")))
        self.tickets.append(t)
        return t

    def _category(self) -> str:
        return self.rng.choices(CATEGORIES, WEIGHTS)[0]

    def _htmlify(self, text: str) -> str:
        """Escape ``text`` as HTML, then add inline tags, a line break and a wrapper."""
        r = self.rng
        out = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
        out = out.replace("'", r.choice(["&#39;", "&#x27;"])).replace("$", r.choice(["$", "&#36;"]), 1)
        if r.random() < 0.5:
            out = out.replace(" ", "&nbsp;", 1)
        words = out.split(" ")
        for i in r.sample(range(len(words)), min(2, len(words))):
            if words[i].isalpha():
                tag = r.choice(["b", "strong", "em", 'a href="https://example.com/help"'])
                words[i] = f"<{tag}>{words[i]}</{tag.split()[0]}>"
        out = " ".join(words).replace(". ", r.choice([".<br/>", ".<br>\n", ".</p><p>", ". "]), 1)
        return r.choice(["<p>{}</p>", "<div>{}</div>", '<div class="msg"><p>{}</p></div>', "{}<br/>"]).format(out)

    def _pii(self) -> tuple[str, str]:
        r = self.rng
        if r.random() < 0.5:
            return f"{r.choice(EMAIL_USERS)}@{r.choice(EMAIL_DOMAINS)}", "[EMAIL]"
        a, b, c = r.randint(201, 989), r.randint(201, 989), f"{r.randint(0, 9999):04d}"
        return r.choice(PHONE_FORMATS).format(a=a, b=b, c=c), "[PHONE]"

    def _with_pii(self, template: str) -> tuple[str, str, list[str]]:
        raw, clean, found = template, template, []
        for slot, want in (("{E}", "[EMAIL]"), ("{P}", "[PHONE]")):
            while slot in raw:
                value, tag = self._pii()
                while tag != want:
                    value, tag = self._pii()
                raw, clean = raw.replace(slot, value, 1), clean.replace(slot, tag, 1)
                found.append(value)
        return raw, clean, found

    # -- planted cases ---------------------------------------------------------------------
    def build(self) -> dict[str, Any]:
        r = self.rng
        m: dict[str, Any] = {k: [] for k in ("html", "pii", "empty", "non_english", "english_with_foreign_words",
                                             "exact_dups", "near_dups", "too_long", "long_allowed")}
        for _ in range(r.randint(300, 350)):
            c = self._category()
            self._add(c, *self._english(c), kind="base")
        for _ in range(r.randint(14, 20)):
            c = self._category()
            u, a = self._english(c, hi=ORDINARY_MAX - 20)
            u = f"{u} {r.choice(HTML_EXTRA)}" if r.random() < 0.7 else u
            t = self._add(c, u, a, "html", raw_user=self._htmlify(u), raw_reply=self._htmlify(a) if r.random() < 0.6 else a)
            m["html"].append(t)
        for i in range(r.randint(16, 24)):
            c = self._category()
            u, a = self._english(c, hi=ORDINARY_MAX - 45)
            raw_u, clean_u, found = self._with_pii(r.choice(PII_USER))
            raw_a, clean_a, found_a = self._with_pii(r.choice(PII_REPLY)) if i % 3 == 0 else ("", "", [])
            t = self._add(c, f"{u} {clean_u}", f"{a} {clean_a}".strip(), "pii", raw_user=f"{u} {raw_u}",
                          raw_reply=f"{a} {raw_a}".strip())
            t["pii"] = found + found_a
            m["pii"].append(t)
        for _ in range(r.randint(2, 3)):  # duplicates only once redacted
            c = self._category()
            u, a = self._english(c, hi=ORDINARY_MAX - 35)
            template = r.choice(PII_USER)
            group: list[dict[str, Any]] = []
            while len(group) < 2:
                raw_u, clean_u, found = self._with_pii(template)
                if group and group[0]["customer_message"] == f"{u} {raw_u}":
                    continue
                t = self._add(c, f"{u} {clean_u}", a, "pii", raw_user=f"{u} {raw_u}", unique=not group)
                t["pii"] = found
                group.append(t)
            m["pii"] += group
            m["exact_dups"].append({"members": group, "after_redaction": True})
        for _ in range(r.randint(3, 5)):
            c = self._category()
            u, a = self._english(c, hi=ORDINARY_MAX - 10)
            m["english_with_foreign_words"].append(self._add(c, f"{r.choice(FOREIGN_GREETINGS)} {u}", a, "foreign-words"))
        for _ in range(r.randint(6, 10)):
            c = self._category()
            u, a = self._english(c, extra=2, lo=LONG_ALLOWED[0], hi=LONG_ALLOWED[1])
            m["long_allowed"].append(self._add(c, u, a, "long-allowed"))
        for i in range(r.randint(14, 20)):
            c = self._category()
            u, _ = self._english(c)
            raw = EMPTY_REPLIES[i % len(EMPTY_REPLIES)]
            m["empty"].append(self._add(c, u, None, "empty", raw_reply=raw))
        for i in range(r.randint(18, 26)):
            lang = sorted(FOREIGN)[i % len(FOREIGN)]
            asks, replies = FOREIGN[lang]
            v = self._values()
            u, a = r.choice(asks).format(**v), r.choice(replies).format(**v)
            m["non_english"].append(self._add(self._category(), u, a, "non-english", lang=lang))
        for _ in range(r.randint(10, 14)):
            c = self._category()
            u, a = self._english(c)
            group = [self._add(c, u, a, "exact-dup")] + [self._add(c, u, a, "exact-dup", unique=False)
                                                           for _ in range(r.choice([1, 1, 2]))]
            m["exact_dups"].append({"members": group, "after_redaction": False})
        for _ in range(r.randint(10, 14)):
            c = self._category()
            u, a = self._english(c, hi=ORDINARY_MAX - 25)
            group = [self._add(c, u, a, "near-dup")]
            for _ in range(r.choice([1, 1, 2])):
                vu, va = self._variant(u, a, group)
                group.append(self._add(c, vu, va, "near-dup", unique=False))
            m["near_dups"].append({"members": group})
        # Drawn last with fresh replies: the side without filler has a key no other ticket has,
        # so the checks recognise a too-long ticket exactly, even truncated on its long side.
        for i in range(r.randint(6, 10)):
            c = self._category()
            u, a = self._english(c, fresh_reply=True)
            filler = " ".join(r.choice(LONG_EXTRA + DETAILS) for _ in range(60)).format(**self._values())
            u, a = (f"{u} {filler}", a) if i % 2 == 0 else (u, f"{a} {filler}")
            assert self.count(u, a) > TOO_LONG_MIN
            m["too_long"].append(self._add(c, u, a, "too-long"))
        r.shuffle(self.tickets)
        self._stamp(m)
        return self._manifest(m)

    def _variant(self, user: str, reply: str, group: list[dict[str, Any]]) -> tuple[str, str]:
        r = self.rng
        seen = {(t["user"], t["assistant"]) for t in group}
        edits = [str.lower, str.title, lambda s: s.replace(" ", "  ", 3), lambda s: "  " + s.replace(". ", ".\n") + " \n",
                 lambda s: re.sub(r"[^\w\s]", "", s), lambda s: s.rstrip(".!?") + "!!", lambda s: s.replace(",", "")]
        for _ in range(100):
            vu = r.choice(edits)(user) if r.random() < 0.8 else user
            va = r.choice(edits)(reply) if r.random() < 0.5 else reply
            if (vu, va) not in seen and key(vu) == key(user) and key(va) == key(reply) and self.count(vu, va) <= ORDINARY_MAX:
                return vu, va
        raise RuntimeError("could not draw a near duplicate")

    def _stamp(self, m: dict[str, Any]) -> None:
        """created_at for everyone; in dup groups the kept member is the earliest, often not first in file."""
        r = self.rng
        position = {id(t): i for i, t in enumerate(self.tickets)}
        ids = r.sample(range(10000, 99999), len(self.tickets))
        for t, n in zip(self.tickets, ids):
            t["ticket_id"] = f"TCK-{n}"
            t["utc"] = START + timedelta(minutes=r.randint(0, 180 * 24 * 60))
        groups = [g["members"] for g in m["exact_dups"] + m["near_dups"]]
        for gi, members in enumerate(groups):
            in_file = sorted(members, key=lambda t: position[id(t)])
            keep = in_file[-1] if gi % 2 == 0 else r.choice(in_file)
            base = START + timedelta(minutes=r.randint(0, 170 * 24 * 60))
            others = [t for t in in_file if t is not keep]
            keep["utc"] = base
            for j, t in enumerate(others, start=1):
                t["utc"] = base + timedelta(minutes=r.randint(30, 600) * j)
        for t in self.tickets:
            t["offset"] = r.choice(OFFSETS)
        # One near-dup group where comparing created_at as strings picks the wrong ticket:
        # the earliest is written 10:00+02:00, the next 09:00Z.
        first = sorted(m["near_dups"][0]["members"], key=lambda t: t["utc"])
        first[0]["utc"] = first[0]["utc"].replace(hour=8, minute=0)
        for j, t in enumerate(first[1:], start=1):
            t["utc"] = first[0]["utc"] + timedelta(hours=j)
        first[0]["offset"], first[1]["offset"] = 120, 0
        for g in groups:
            g.sort(key=lambda t: t["utc"])
        for t in self.tickets:
            local = t["utc"].astimezone(timezone(timedelta(minutes=t["offset"])))
            t["created_at"] = local.isoformat().replace("+00:00", "Z" if t["offset"] == 0 and r.random() < 0.5 else "+00:00")

    def _manifest(self, m: dict[str, Any]) -> dict[str, Any]:
        def texts(t: dict[str, Any], *extra: str) -> dict[str, Any]:
            return {"ticket_id": t["ticket_id"], "user": t["user"], "assistant": t["assistant"], **{k: t[k] for k in extra}}

        def dups(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
            out = []
            for g in groups:
                members = g["members"]  # sorted earliest first by _stamp
                entry = {"ticket_ids": [t["ticket_id"] for t in members], "keep": members[0]["ticket_id"],
                         "variants": [texts(t, "created_at") for t in members]}
                if "after_redaction" in g:
                    entry["after_redaction"] = g["after_redaction"]
                out.append(entry)
            return out

        dropped = {"empty": len(m["empty"]), "non_english": len(m["non_english"]),
                   "duplicate": sum(len(g["members"]) - 1 for g in m["exact_dups"] + m["near_dups"]),
                   "too_long": len(m["too_long"])}
        n_kept = len(self.tickets) - sum(dropped.values())
        removed = {id(t) for k in ("empty", "non_english", "too_long") for t in m[k]}
        removed |= {id(t) for g in m["exact_dups"] + m["near_dups"] for t in g["members"][1:]}
        by_cat = {c: sum(1 for t in self.tickets if t["category"] == c and id(t) not in removed) for c in CATEGORIES}
        assert sum(by_cat.values()) == n_kept
        kept_pii = [t for t in m["pii"] if id(t) not in removed]
        return {
            "version": MANIFEST_VERSION,
            "max_tokens": MAX_TOKENS,
            "counts": {"input": len(self.tickets), "kept": n_kept, "dropped": dropped, "kept_by_category": by_cat},
            "html": [texts(t) for t in m["html"]],
            "pii": [texts(t, "pii") for t in kept_pii],
            "pii_strings": sorted({s for t in m["pii"] for s in t["pii"]}),
            "empty": [{"ticket_id": t["ticket_id"], "user": t["user"]} for t in m["empty"]],
            "non_english": [{"ticket_id": t["ticket_id"], "lang": t["lang"], "user": t["user"]} for t in m["non_english"]],
            "english_with_foreign_words": [texts(t) for t in m["english_with_foreign_words"]],
            "exact_dups": dups(m["exact_dups"]),
            "near_dups": dups(m["near_dups"]),
            "too_long": [texts(t) for t in m["too_long"]],
            "long_allowed": [texts(t) for t in m["long_allowed"]],
        }


def main() -> None:
    """Regenerate the public data: python tasks/data-prep/hidden/generate.py [--seed public] [--out DIR]."""
    import argparse

    pack = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--seed", default="public")
    parser.add_argument("--out", type=Path, default=pack / "public")
    parser.add_argument("--tokenizer", type=Path, default=pack.parent / "_shared" / "tokenizer")
    args = parser.parse_args()
    manifest = generate(args.out, args.seed, {"tokenizer": args.tokenizer})
    text = json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False)  # as the grader writes it
    (args.out / "manifest.json").write_text(text + "\n", encoding="utf-8")
    print(f"wrote {args.out}: {manifest['counts']}")


if __name__ == "__main__":
    main()
