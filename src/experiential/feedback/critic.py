"""An LLM critic as a feedback source: a model reads the task, the attempt and the reference
solution (when there is one) and writes the feedback, as GPT-4o-mini did in the published runs.

Backends: any OpenAI-compatible endpoint (:class:`OpenAIBackend`, ``experiential serve`` included)
or a local model (:class:`LocalBackend`, e.g. the embedded ``critic`` given the reference solution).
Answers are cached on disk by request, so a rerun neither pays for nor waits on the critic, and
:attr:`Critic.transcript` keeps what the critic said for the report.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from types import EllipsisType
from typing import Any, Mapping, Protocol
from urllib.parse import urlsplit

import httpx

from ..experience import Experience, Message
from .base import Task, experience

_CONTEXT = "Problem:\n{problem}\n\nStudent's answer:\n{attempt}\n\n{reference_block}"
_STYLE = " Address the student directly as \"you\", in 2-5 sentences, with no preamble."
TEMPLATES: dict[str, str] = {
    "wrong_explain": _CONTEXT + "The student's answer is wrong. Explain what the mistake is and "
    "why it is a mistake, then state the correct answer." + _STYLE,
    "wrong_no_answer": _CONTEXT + "The student's answer is wrong. Explain what is wrong in the "
    "reasoning and hint at how to fix it. Do NOT reveal the correct answer and do not quote the "
    "reference solution." + _STYLE,
    "sloppy": _CONTEXT + "The student's answer is correct but sloppy. Say how to make the solution "
    "more elegant and concise." + _STYLE,
    "correct": _CONTEXT + "The student's answer is correct. Say so and briefly say why it is "
    "right." + _STYLE,
    "review": _CONTEXT + "Decide whether the student's answer is correct. If it is wrong, explain "
    "the mistake and give the correct answer; if it is right, say so and briefly why." + _STYLE,
}
SYSTEM = "You are a precise, encouraging teacher giving feedback on a student's answer."


class CriticError(RuntimeError):
    """The critic could not give feedback (refused request, malformed or empty reply)."""


class CriticUnavailableError(CriticError):
    """The critic endpoint could not be reached, or kept failing, after every retry."""


class ChatBackend(Protocol):
    """What the critic needs from a model: chat messages in, text out. ``identity`` keys the
    cache (same identity + same request = same answer) and ``model_name`` goes in metadata."""

    identity: str
    model_name: str

    def complete(self, messages: list[Message], *, max_tokens: int, temperature: float) -> str: ...


_HINTS = {401: " (check the API key)", 403: " (check the API key's permissions)",
          404: " (check base_url and the model name)"}


class OpenAIBackend:
    """``POST {base_url}/chat/completions``. Transient failures (connection errors, timeouts, 429,
    5xx) are retried with exponential backoff, honouring ``Retry-After``; other 4xx are the
    caller's mistake and fail at once with the server's message. ``base_url`` may omit ``/v1``."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", timeout: float = 60, max_retries: int = 4,
                 backoff: float = 1.0, max_delay: float = 60.0):
        base = base_url.rstrip("/")
        self.base_url = base if urlsplit(base).path not in ("", "/") else base + "/v1"
        self.url = self.base_url + "/chat/completions"
        self.model = self.model_name = model
        self.identity = f"openai:{self.base_url}:{model}"
        self.api_key = api_key or os.environ.get(api_key_env) or None
        self.timeout, self.max_retries, self.backoff = timeout, max_retries, backoff
        self.max_delay = max_delay

    def complete(self, messages: list[Message], *, max_tokens: int, temperature: float) -> str:
        body = {"model": self.model, "messages": messages, "max_tokens": max_tokens,
                "temperature": temperature}
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        last = ""
        with httpx.Client(timeout=self.timeout, headers=headers) as client:
            for attempt in range(self.max_retries + 1):
                delay = self.backoff * 2 ** attempt
                try:
                    r = client.post(self.url, json=body)
                except httpx.TimeoutException:
                    last = f"no answer within the {self.timeout}s timeout"
                except httpx.TransportError as e:
                    last = f"connection failed ({type(e).__name__}: {e})"
                else:
                    if r.status_code < 400:
                        return _content(r, self.url)
                    if r.status_code != 429 and r.status_code < 500:
                        raise CriticError(f"the critic endpoint {self.url} refused the request: "
                                          f"HTTP {r.status_code}: {_server_message(r)}"
                                          f"{_HINTS.get(r.status_code, '')}")
                    last = f"HTTP {r.status_code}: {_server_message(r)}"
                    delay = _retry_after(r.headers.get("retry-after"), delay)
                if attempt < self.max_retries:
                    time.sleep(min(delay, self.max_delay))
        raise CriticUnavailableError(
            f"the critic endpoint {self.url} is unavailable after {self.max_retries + 1} "
            f"attempt(s): {last}. Check that the server is running and reachable at that URL, "
            "that base_url and the model name are right, or raise timeout/max_retries.")


def _server_message(r: httpx.Response) -> str:
    try:
        err = r.json().get("error")
        return str(err.get("message") if isinstance(err, dict) else err or r.text)[:500]
    except (ValueError, AttributeError):
        return r.text[:500] or r.reason_phrase


def _retry_after(value: str | None, default: float) -> float:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), else default."""
    try:
        return max(0.0, float(value)) if value else default
    except ValueError:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return default


def _content(r: httpx.Response, url: str) -> str:
    try:
        return r.json()["choices"][0]["message"]["content"] or ""
    except (ValueError, KeyError, IndexError, TypeError):
        raise CriticError(f"the critic endpoint {url} sent a reply that is not an OpenAI chat "
                          f"completion: {r.text[:200]!r}") from None


class LocalBackend:
    """A local causal LM with its chat template (greedy at temperature 0). The model loads on the
    first uncached request, so a fully cached rerun never loads it. Give ``model``/``tokenizer``
    to use one already loaded; ``name`` then keys the cache, so make it unique per weights."""

    def __init__(self, model_name_or_path: str | os.PathLike | None = None, dtype: str = "auto",
                 device: str = "auto", *, model: Any = None, tokenizer: Any = None,
                 name: str | None = None):
        if model is None and model_name_or_path is None:
            raise ValueError("give model_name_or_path or an already loaded model and tokenizer")
        self.path, self.dtype, self.device = model_name_or_path, dtype, device
        self.model, self.tokenizer = model, tokenizer
        self.model_name = name or str(model_name_or_path or getattr(
            getattr(model, "config", None), "_name_or_path", "") or type(model).__name__)
        self.identity = f"local:{self.model_name}"
        self._lock = threading.Lock()

    def complete(self, messages: list[Message], *, max_tokens: int, temperature: float) -> str:
        from ..generation import generate
        with self._lock:  # one generation at a time; also guards the lazy load
            if self.model is None:
                from ..models import load_model
                self.model, self.tokenizer = load_model(self.path, dtype=self.dtype,
                                                        device=self.device)
            return generate(self.model, self.tokenizer, [messages], max_new_tokens=max_tokens,
                            temperature=temperature)[0][0]


class Critic:
    """A :class:`~experiential.feedback.base.FeedbackSource` whose feedback an LLM writes.

    ``template`` is a name in ``templates`` (defaults: :data:`TEMPLATES`, overridable) or
    ``"auto"``: ``metadata['correct']`` (or ``'passed'``, or a ``'judge'`` bool/``{'correct'}``)
    picks ``correct``/``sloppy`` (when ``metadata['sloppy']``) or ``wrong_explain``; with no
    verdict the neutral ``review`` asks the critic to judge, rather than assert a mistake.
    ``cache_dir``: ``...`` for ``<cache>/critic`` (``~/.cache/experiential/critic``), ``None`` for
    no cache. An empty attempt gets "The attempt is empty" without asking the critic; an empty
    critic reply raises :class:`CriticError` (``review_all`` turns it into an error feedback).
    """

    def __init__(self, backend: ChatBackend, template: str = "auto", *,
                 cache_dir: str | os.PathLike | None | EllipsisType = ...,
                 max_tokens: int = 256, temperature: float = 0.0,
                 templates: Mapping[str, str] | None = None, system: str | None = SYSTEM):
        self.backend, self.template = backend, template
        self.templates = {**TEMPLATES, **(templates or {})}
        if template != "auto" and template not in self.templates:
            raise ValueError(f"unknown critic template {template!r}; choose 'auto' or one of "
                             f"{sorted(self.templates)}")
        if cache_dir is ...:
            from ..models import cache_dir as base_cache
            cache_dir = base_cache() / "critic"
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.max_tokens, self.temperature, self.system = max_tokens, temperature, system
        self.name = f"critic {backend.model_name}"
        self.transcript: list[dict[str, Any]] = []
        """This session's requests and replies (cached or not), for the report."""

    def choose_template(self, task: Task) -> str:
        if self.template != "auto":
            return self.template
        meta = task.metadata
        verdict = meta.get("correct", meta.get("passed"))
        judge = meta.get("judge")
        if verdict is None and judge is not None:
            verdict = judge.get("correct") if isinstance(judge, dict) else judge
        if verdict is None:
            return "review"
        return ("sloppy" if meta.get("sloppy") else "correct") if verdict else "wrong_explain"

    def messages(self, task: Task, attempt: str, template: str | None = None,
                 **fields: str) -> list[Message]:
        """The chat the critic is sent (public so a report can show it). ``fields`` fill
        placeholders of a caller's own template beyond the standard ones (e.g. test results)."""
        prompt = task.prompt if isinstance(task.prompt, str) else "\n\n".join(
            m["content"] for m in task.prompt if m["role"] != "assistant")
        ref = (f"Reference solution (for you, the teacher):\n{task.reference.strip()}\n\n"
               if task.reference else "")
        text = self.templates[template or self.choose_template(task)].format(
            problem=prompt.strip(), attempt=attempt.strip(), reference=task.reference or "",
            reference_block=ref, **fields)
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + [{"role": "user", "content": text}]

    def complete(self, messages: list[Message]) -> str:
        """The backend's reply, from the cache when this exact request was made before."""
        request = {"backend": self.backend.identity, "messages": messages,
                   "max_tokens": self.max_tokens, "temperature": self.temperature}
        key = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()
        path = self.cache_dir / key[:2] / f"{key}.json" if self.cache_dir else None
        reply = None
        try:
            reply = json.loads(path.read_text("utf-8"))["response"] if path else None
        except (OSError, ValueError, KeyError):  # absent or damaged: ask, then (re)write
            pass
        cached = reply is not None
        if reply is None:
            reply = self.backend.complete(messages, max_tokens=self.max_tokens,
                                          temperature=self.temperature)
            if path is not None and reply.strip():  # an empty reply is not worth keeping
                _write_atomic(path, json.dumps({"request": request, "response": reply}))
        self.transcript.append({"request": request, "response": reply, "cached": cached})
        return reply

    def review(self, task: Task, attempt: str) -> Experience:
        meta = {"source": "critic", "critic_model": self.backend.model_name}
        if not (attempt or "").strip():
            return experience(task, attempt, "The attempt is empty: there is no answer to "
                              "review. Write out your solution.", template="empty", **meta)
        template = self.choose_template(task)
        reply = self.complete(self.messages(task, attempt, template)).strip()
        if not reply:
            raise CriticError(f"the critic ({self.backend.model_name}) returned an empty reply "
                              f"for task {task.id or '?'} (template {template!r})")
        return experience(task, attempt, reply, template=template, **meta)

    def dump_transcript(self, path: str | os.PathLike, *, merge: bool = False) -> int:
        """Write :attr:`transcript` as JSONL, atomically. Returns the number of entries written.

        ``merge``: keep what the file already holds and add only the requests it lacks, one entry
        per request (the first, so a reply first fetched stays marked uncached). A resumed run
        asks nothing for the stages it reads back, and its transcript must still show them."""
        entries = list(self.transcript)
        if merge:
            path = Path(path)
            old = [json.loads(line) for line in path.read_text("utf-8").splitlines()
                   if line.strip()] if path.is_file() else []
            seen: set[str] = set()
            entries = []
            for t in old + self.transcript:
                key = json.dumps(t["request"], sort_keys=True)
                if key not in seen:
                    seen.add(key)
                    entries.append(t)
        lines = "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in entries)
        _write_atomic(Path(path), lines)
        return len(entries)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
