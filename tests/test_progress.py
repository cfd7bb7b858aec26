"""Progress bars: one bar per long call, the nested ones silent."""

from __future__ import annotations

from retriever_forge.llm import CachedLLM, Generation, SamplingParams
from retriever_forge.progress import _NoBar, progress_bar


class EchoBackend:
    """A backend that answers every prompt with itself, opening its own bar per call as the real ones do."""

    model_id = "echo"
    weights_hash = "0" * 64

    def __init__(self):
        self.calls = 0

    def render_prompt(self, prompt: str) -> str:
        return prompt

    def generate(self, prompts, params):
        self.calls += 1
        with progress_bar(len(prompts), "generate", unit="prompt") as bar:
            bar.update(len(prompts))
        return [Generation(p, 1, 1) for p in prompts]


def test_a_bar_opened_inside_another_stays_silent(monkeypatch):
    monkeypatch.setenv("RETRIEVER_FORGE_PROGRESS", "1")
    with progress_bar(100, "outer") as outer:
        assert not isinstance(outer, _NoBar)
        assert isinstance(progress_bar(100, "inner"), _NoBar)
    assert not isinstance(inner_after := progress_bar(100, "again"), _NoBar)  # the outer bar closed
    inner_after.close()
    assert isinstance(progress_bar(10, "short"), _NoBar)  # too few items to be worth a bar


def test_the_llm_cache_shows_one_bar_for_a_call_sent_in_many_groups(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("RETRIEVER_FORGE_PROGRESS", "1")
    backend = EchoBackend()
    llm = CachedLLM(backend, tmp_path / "cache.sqlite", batch_size=64)
    out = llm.generate([f"prompt {i}" for i in range(200)], SamplingParams(max_new_tokens=4))
    assert [g.text for g in out] == [f"prompt {i}" for i in range(200)] and backend.calls == 4
    err = capsys.readouterr().err
    assert "generate" in err and "/200 " in err  # the cache's bar counts the whole call
    assert "/64 " not in err and err.count("generate:") == 1  # each group's own bar stayed silent
    llm.generate([f"prompt {i}" for i in range(200)], SamplingParams(max_new_tokens=4))
    assert backend.calls == 4 and "generate" not in capsys.readouterr().err  # all cached: nothing to show


def test_training_shows_a_bar_even_for_few_steps(monkeypatch, capsys):
    """A training step takes seconds: 17 steps are minutes, worth a bar (the 64-item floor is for prompts)."""
    from retriever_forge.orchestration.assets.common import log_progress

    class Log:
        def info(self, message):
            pass

    class Context:
        log = Log()

    monkeypatch.setenv("RETRIEVER_FORGE_PROGRESS", "1")
    report = log_progress(Context())
    for step in range(1, 18):
        report({"step": step, "total_steps": 17, "loss": 0.1})
    err = capsys.readouterr().err
    assert "train:" in err and "/17 " in err  # redrawn at most once a second, so the last count may not show
