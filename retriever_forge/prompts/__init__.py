"""Versioned prompt templates, kept as files and identified by content hash.

A template id is ``<group>/<name>`` (e.g. ``queries/inpars_question_v1``) naming a bundled file,
or a path to the user's own ``.txt`` file. Lines starting with ``#`` are comments and are not
sent; the hash covers the text that is sent, so editing a comment changes nothing downstream
while editing the prompt changes every artifact made from it.

Example:
    >>> from retriever_forge.prompts import load_template
    >>> t = load_template("judge/umbrela_v1")
    >>> "{query}" in t.text and len(t.hash)
    64
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from retriever_forge.hashing import hash_text

PROMPTS_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class PromptTemplate:
    id: str
    text: str
    hash: str

    def render(self, **fields: str) -> str:
        # str.replace rather than str.format: passages contain braces.
        out = self.text
        for key, value in fields.items():
            out = out.replace("{" + key + "}", value)
        return out

    def as_record(self) -> dict:
        return {"id": self.id, "hash": self.hash}


def load_template(template_id: str) -> PromptTemplate:
    path = Path(template_id)
    if not (path.suffix == ".txt" and path.exists()):
        path = PROMPTS_DIR / f"{template_id}.txt"
    if not path.exists():
        available = sorted(p.relative_to(PROMPTS_DIR).with_suffix("").as_posix() for p in PROMPTS_DIR.rglob("*.txt"))
        raise FileNotFoundError(f"prompt template {template_id!r} not found; bundled templates: {available}")
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if not ln.startswith("#")]
    text = "\n".join(lines).strip() + "\n"
    return PromptTemplate(id=template_id, text=text, hash=hash_text(text))
