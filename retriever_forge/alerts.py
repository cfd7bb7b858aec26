"""Failure alerts: one short JSON message per failed run, to a webhook or a local file.

The message names what a person on call needs first: the dataset, the failed step, the
error's first line, and a link to the run::

    {"dataset": "cacm", "step": "relevance_judgments", "error": "ConnectionError: ...",
     "run_id": "…", "run_url": "http://127.0.0.1:3000/runs/…", "job": "adapt_retriever"}

It is POSTed as JSON to ``$RETRIEVER_FORGE_ALERT_WEBHOOK`` (a Slack/Teams-compatible incoming
webhook gets a ``text`` field too). Without a webhook, or when posting fails, the message is
appended as one line to a local JSON-lines file (``$RETRIEVER_FORGE_ALERT_FILE``, default
``<RETRIEVER_FORGE_HOME>/alerts.jsonl``), so an alert is never lost silently.

Example:
    >>> import tempfile, pathlib, json
    >>> msg = failure_message("run-1", dataset="cacm", step="corpus", error="boom\\nTraceback ...", base_url="http://ui")
    >>> msg["run_url"], msg["error"]
    ('http://ui/runs/run-1', 'boom')
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "alerts.jsonl"
    >>> deliver(msg, webhook_url=None, fallback_file=out)
    'file'
    >>> json.loads(out.read_text())["step"]
    'corpus'
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

WEBHOOK_ENV = "RETRIEVER_FORGE_ALERT_WEBHOOK"
FILE_ENV = "RETRIEVER_FORGE_ALERT_FILE"
UI_URL_ENV = "RETRIEVER_FORGE_UI_URL"
MAX_ERROR_CHARS = 300


def failure_message(run_id: str, *, dataset: str | None, step: str | None, error: str, base_url: str, job: str | None = None) -> dict:
    """The alert for a failed run (``error`` is cut to its first line, at most 300 characters)."""
    first = next((line.strip() for line in (error or "").splitlines() if line.strip()), "unknown error")
    if len(first) > MAX_ERROR_CHARS:
        first = first[: MAX_ERROR_CHARS - 1] + "…"
    return {
        "dataset": dataset,
        "step": step,
        "error": first,
        "run_id": run_id,
        "run_url": f"{base_url.rstrip('/')}/runs/{run_id}",
        "job": job,
    }


def deliver(message: dict, webhook_url: str | None, fallback_file: str | os.PathLike, timeout_s: float = 10.0) -> str:
    """POST ``message`` to ``webhook_url``; append it to ``fallback_file`` when there is none or
    posting fails. Returns ``"webhook"`` or ``"file"``."""
    if webhook_url:
        import requests

        body = {**message, "text": summary_line(message)}
        try:
            response = requests.post(webhook_url, json=body, timeout=timeout_s)
            response.raise_for_status()
            return "webhook"
        except requests.RequestException as e:
            log.warning("alert webhook %s failed (%s); writing the alert to %s", webhook_url, e, fallback_file)
    path = Path(fallback_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(message, sort_keys=True) + "\n")
    return "file"


def summary_line(message: dict) -> str:
    """One human line: ``retriever-forge: cacm failed at relevance_judgments: <error> (<url>)``."""
    where = f" at {message['step']}" if message.get("step") else ""
    return f"retriever-forge: {message.get('dataset') or 'run'} failed{where}: {message['error']} ({message['run_url']})"
