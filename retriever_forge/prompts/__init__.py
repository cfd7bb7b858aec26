"""Versioned prompt templates, kept as files and identified by content hash.

A template id is ``<group>/<name>`` (e.g. ``queries/inpars_question_v1``) naming a bundled file,
or a path to the user's own ``.txt`` file. Lines starting with ``#`` are comments and are not
sent; the hash covers the text that is sent (and its format), so editing a comment changes
nothing downstream while editing the prompt changes every artifact made from it.

A ``# format: completion`` line marks a template that is sent as plain text to be continued
(InPars-style few-shot patterns); by default a template is a chat user turn.

Example:
    >>> from retriever_forge.prompts import load_template
    >>> t = load_template("judge/umbrela_v1")
    >>> "{query}" in t.text and len(t.hash)
    64
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from retriever_forge.hashing import hash_text

PROMPTS_DIR = Path(__file__).resolve().parent
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class PromptTemplate:
    id: str
    text: str
    hash: str
    chat: bool = True  # False: a completion prompt, sent without the chat template

    def render(self, **fields: str) -> str:
        r"""The template with each ``{name}`` placeholder replaced by ``fields[name]``.

        One pass over the template (not ``str.format``: passages contain braces), so inserted
        text is never scanned again: a query that reads ``{passage}`` stays literal text.

        >>> PromptTemplate("t", "Q: {query}\nP: {passage}", "").render(query="{passage}?", passage="p {x}")
        'Q: {passage}?\nP: p {x}'
        """
        return _PLACEHOLDER.sub(lambda m: fields.get(m.group(1), m.group(0)), self.text)

    def as_record(self) -> dict:
        """What a manifest keeps of the template: its text too, so an audit or a diff can show
        the prompt a run used even after the template file has been edited."""
        return {"id": self.id, "hash": self.hash, "format": "chat" if self.chat else "completion", "text": self.text}


def load_template(template_id: str) -> PromptTemplate:
    path = Path(template_id)
    if not (path.suffix == ".txt" and path.exists()):
        path = PROMPTS_DIR / f"{template_id}.txt"
    if not path.exists():
        available = sorted(p.relative_to(PROMPTS_DIR).with_suffix("").as_posix() for p in PROMPTS_DIR.rglob("*.txt"))
        raise FileNotFoundError(f"prompt template {template_id!r} not found; bundled templates: {available}")
    raw = path.read_text(encoding="utf-8").splitlines()
    chat = not any(ln.strip().lower() == "# format: completion" for ln in raw)
    # Completion prompts end where the model continues (after "Relevant Query:"): no newline.
    text = "\n".join(ln for ln in raw if not ln.startswith("#")).strip() + ("\n" if chat else "")
    return PromptTemplate(id=template_id, text=text, hash=hash_text(("chat\n" if chat else "completion\n") + text), chat=chat)
