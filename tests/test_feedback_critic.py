"""The LLM critic against real HTTP servers on 127.0.0.1 (no mocked client): the project's own
``experiential serve`` app with the tiny Llama, and small stdlib servers that count requests and
answer 503/429/400, sleep past the timeout, or send canned OpenAI completions."""

from __future__ import annotations

import json
import socket
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

import pytest

from conftest import build_tiny_model, build_tiny_tokenizer, running
from experiential.feedback.base import Task, review_all
from experiential.feedback.critic import (TEMPLATES, Critic, CriticError, CriticUnavailableError,
                                          LocalBackend, OpenAIBackend)

TASK = Task(prompt=[{"role": "user", "content": "What is 2 + 3?"}], reference="2 + 3 = 5. #### 5",
            id="t1", metadata={"correct": False})
ATTEMPT = "2 + 3 = 6. The answer is 6."


def completion(text: str) -> dict[str, Any]:
    return {"id": "chatcmpl-x", "object": "chat.completion", "model": "stub",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop"}]}


Reply = tuple[int, Any, dict[str, str], float]  # status, JSON body, headers, sleep before replying


@contextmanager
def stub(respond: Callable[[int], Reply]) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A real HTTP server; ``respond(n)`` answers the n-th request (0-based). Yields the base URL
    and the list of request bodies it received."""
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            seen.append({"path": self.path, "body": body})
            status, payload, headers, sleep = respond(len(seen) - 1)
            time.sleep(sleep)
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                for k, v in {"content-type": "application/json", **headers}.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:  # the client gave up (timeout test)
                pass

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def ok(text: str = "You added wrong: 2 + 3 is 5, not 6.") -> Callable[[int], Reply]:
    return lambda n: (200, completion(text), {}, 0.0)


def fast(url: str, **kw: Any) -> OpenAIBackend:
    kw = {"max_retries": 2, "backoff": 0.01, "timeout": 5, **kw}
    return OpenAIBackend(url, "stub-model", api_key="k", **kw)


# -- the project's own server --------------------------------------------------------------------
def test_critic_against_experiential_serve_then_cached_when_the_server_is_gone(tmp_path):
    pytest.importorskip("fastapi")
    from experiential.serve import create_app

    tok = build_tiny_tokenizer()
    app = create_app(build_tiny_model(len(tok)), tok, state_dir=tmp_path / "state", api_keys=[],
                     learn_every=None, model_name="tiny-critic")
    with running(app) as url:
        critic = Critic(OpenAIBackend(url, "tiny-critic", max_retries=1, backoff=0.01),
                        cache_dir=tmp_path / "cache", max_tokens=16)
        exp = critic.review(TASK, ATTEMPT)
    assert exp.feedback.strip() and exp.feedback == exp.feedback.strip()
    exp.validate()
    assert exp.metadata["source"] == "critic" and exp.metadata["template"] == "wrong_explain"
    assert exp.metadata["critic_model"] == "tiny-critic" and exp.metadata["task_id"] == "t1"
    assert exp.prompt == TASK.prompt and exp.attempt == ATTEMPT
    assert critic.transcript[0]["cached"] is False

    # the server is stopped: the same review comes from the cache, a new one cannot be made
    again = Critic(OpenAIBackend(url + "/v1", "tiny-critic", max_retries=1, backoff=0.01),
                   cache_dir=tmp_path / "cache", max_tokens=16)
    assert again.review(TASK, ATTEMPT).feedback == exp.feedback
    assert again.transcript[0]["cached"] is True
    with pytest.raises(CriticUnavailableError, match=f"{url}/v1/chat/completions"):
        again.review(TASK, "The answer is 7.")


# -- cache -----------------------------------------------------------------------------------------
def test_a_rerun_costs_no_request_and_the_transcript_is_saved(tmp_path):
    with stub(ok()) as (url, seen):
        first = Critic(fast(url), cache_dir=tmp_path / "c")
        a = first.review(TASK, ATTEMPT)
        b = first.review(TASK, ATTEMPT)
        c = Critic(fast(url), cache_dir=tmp_path / "c").review(TASK, ATTEMPT)  # a new session
        assert len(seen) == 1 and a.feedback == b.feedback == c.feedback
        assert seen[0]["path"] == "/v1/chat/completions"
        body = seen[0]["body"]
        assert body["model"] == "stub-model" and body["max_tokens"] == 256
        assert body["temperature"] == 0.0 and body["messages"][0]["role"] == "system"
        assert "2 + 3 = 6" in body["messages"][-1]["content"]

        files = list((tmp_path / "c").rglob("*"))
        assert [f.suffix for f in files if f.is_file()] == [".json"]  # no temporary file left
        assert first.dump_transcript(tmp_path / "said.jsonl") == 2
        lines = [json.loads(x) for x in (tmp_path / "said.jsonl").read_text().splitlines()]
        assert [x["cached"] for x in lines] == [False, True]
        assert lines[0]["response"] == a.feedback
        assert lines[0]["request"]["messages"] == body["messages"]

        # another model, another temperature, or no cache: a new request each
        Critic(OpenAIBackend(url, "other", api_key="k"), cache_dir=tmp_path / "c").review(
            TASK, ATTEMPT)
        Critic(fast(url), cache_dir=tmp_path / "c", temperature=0.5).review(TASK, ATTEMPT)
        nocache = Critic(fast(url), cache_dir=None)
        nocache.review(TASK, ATTEMPT)
        nocache.review(TASK, ATTEMPT)
        assert len(seen) == 5


# -- retries and errors ----------------------------------------------------------------------------
def test_503_twice_then_success_and_retry_after_is_honoured(tmp_path):
    replies: list[Reply] = [(503, {"error": {"message": "overloaded"}}, {}, 0.0),
                            (429, {"error": {"message": "slow down"}}, {"Retry-After": "0.4"}, 0.0),
                            (200, completion("Close, but 2 + 3 is 5."), {}, 0.0)]
    with stub(lambda n: replies[n]) as (url, seen):
        start = time.perf_counter()
        exp = Critic(fast(url, backoff=0.001), cache_dir=None).review(TASK, ATTEMPT)
        elapsed = time.perf_counter() - start
    assert exp.feedback == "Close, but 2 + 3 is 5." and len(seen) == 3
    assert elapsed >= 0.4  # waited as Retry-After asked, not the 0.002 s backoff


def test_5xx_every_time_is_unavailable_after_the_retries(tmp_path):
    with stub(lambda n: (503, {"error": {"message": "overloaded"}}, {}, 0.0)) as (url, seen):
        with pytest.raises(CriticUnavailableError, match="HTTP 503: overloaded") as e:
            Critic(fast(url, max_retries=2), cache_dir=None).review(TASK, ATTEMPT)
    assert len(seen) == 3 and "3 attempt(s)" in str(e.value)


def test_400_fails_at_once_with_the_servers_message(tmp_path):
    err = {"error": {"message": "max_tokens is too large", "type": "invalid_request_error"}}
    with stub(lambda n: (400, err, {}, 0.0)) as (url, seen):
        with pytest.raises(CriticError) as e:
            Critic(fast(url), cache_dir=tmp_path).review(TASK, ATTEMPT)
    assert not isinstance(e.value, CriticUnavailableError)
    assert "HTTP 400" in str(e.value) and "max_tokens is too large" in str(e.value)
    assert len(seen) == 1
    assert not list(tmp_path.rglob("*.json"))  # nothing cached


def test_unreachable_endpoint_fails_quickly_naming_the_url():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens here now
    start = time.perf_counter()
    with pytest.raises(CriticUnavailableError) as e:
        Critic(fast(f"http://127.0.0.1:{port}"), cache_dir=None).review(TASK, ATTEMPT)
    assert time.perf_counter() - start < 5
    msg = str(e.value)
    assert f"http://127.0.0.1:{port}/v1/chat/completions" in msg
    assert "connection failed" in msg and "Check that the server is running" in msg


def test_a_server_slower_than_the_timeout_is_retried_then_a_clear_error():
    with stub(lambda n: (200, completion("too late"), {}, 1.0)) as (url, seen):
        with pytest.raises(CriticUnavailableError, match="timeout"):
            Critic(fast(url, timeout=0.2, max_retries=1), cache_dir=None).review(TASK, ATTEMPT)
        assert len(seen) == 2


def test_malformed_or_empty_replies_are_clear_errors_and_not_cached(tmp_path):
    with stub(lambda n: (200, {"nope": 1}, {}, 0.0)) as (url, _):
        with pytest.raises(CriticError, match="not an OpenAI chat completion"):
            Critic(fast(url), cache_dir=None).review(TASK, ATTEMPT)
    with stub(ok("   \n")) as (url, seen):
        critic = Critic(fast(url), cache_dir=tmp_path)
        with pytest.raises(CriticError, match="empty reply"):
            critic.review(TASK, ATTEMPT)
        [exp] = review_all(critic, [TASK], [ATTEMPT])  # a batch survives it
        assert exp.metadata["feedback_error"] and "empty reply" in exp.feedback
        assert len(seen) == 2  # the empty reply was not cached


def test_empty_attempt_is_answered_without_asking_the_critic():
    with stub(ok()) as (url, seen):
        exp = Critic(fast(url), cache_dir=None).review(TASK, "  ")
    assert seen == [] and exp.feedback.startswith("The attempt is empty")
    assert exp.metadata["template"] == "empty" and exp.metadata["source"] == "critic"


# -- templates -------------------------------------------------------------------------------------
def test_templates_and_auto_choice():
    critic = Critic(OpenAIBackend("http://127.0.0.1:9", "m"), cache_dir=None)

    def pick(**meta: Any) -> str:
        return critic.choose_template(Task("q", "r", metadata=meta))

    assert pick(correct=True) == "correct" and pick(correct=False) == "wrong_explain"
    assert pick(correct=True, sloppy=True) == "sloppy" and pick(passed=False) == "wrong_explain"
    assert pick(judge={"correct": True}) == "correct" and pick(judge=False) == "wrong_explain"
    assert pick() == "review"  # no verdict: the critic judges, it is not told it is wrong

    hidden = critic.messages(TASK, ATTEMPT, "wrong_no_answer")[-1]["content"]
    assert "Do NOT reveal the correct answer" in hidden
    assert "2 + 3 = 5. #### 5" in hidden  # the critic knows it, and is told to keep it
    explain = critic.messages(TASK, ATTEMPT, "wrong_explain")[-1]["content"]
    assert "state the correct answer" in explain and "What is 2 + 3?" in explain
    assert "Do NOT reveal" not in explain
    for name in ("wrong_explain", "wrong_no_answer", "sloppy", "correct"):
        text = critic.messages(Task("q"), "a", name)[-1]["content"]
        assert "2-5 sentences" in text and "Reference" not in text  # no reference, no block
    assert "elegant" in TEMPLATES["sloppy"] and "concise" in TEMPLATES["sloppy"]

    custom = Critic(OpenAIBackend("http://127.0.0.1:9", "m"), "mine", cache_dir=None,
                    templates={"mine": "Q: {problem} A: {attempt} R: {reference}"}, system=None)
    assert custom.messages(TASK, ATTEMPT) == [
        {"role": "user", "content": f"Q: What is 2 + 3? A: {ATTEMPT} R: 2 + 3 = 5. #### 5"}]
    with pytest.raises(ValueError, match="unknown critic template"):
        Critic(OpenAIBackend("http://127.0.0.1:9", "m"), "nope", cache_dir=None)


def test_base_url_with_or_without_v1():
    for base in ("http://h:1", "http://h:1/", "http://h:1/v1", "http://h:1/v1/"):
        assert OpenAIBackend(base, "m").url == "http://h:1/v1/chat/completions"
    assert OpenAIBackend("https://x/openai/v1", "m").url == "https://x/openai/v1/chat/completions"


def test_default_cache_dir_follows_the_project_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("EXPERIENTIAL_CACHE", str(tmp_path))
    assert Critic(OpenAIBackend("http://h", "m")).cache_dir == tmp_path / "critic"


def test_api_key_from_the_environment(monkeypatch):
    monkeypatch.setenv("MY_CRITIC_KEY", "sekret")
    assert OpenAIBackend("http://h", "m", api_key_env="MY_CRITIC_KEY").api_key == "sekret"
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert OpenAIBackend("http://h", "m").api_key is None


# -- local backend ---------------------------------------------------------------------------------
def test_local_backend_mechanics(tmp_path):
    tok = build_tiny_tokenizer()
    model = build_tiny_model(len(tok))
    backend = LocalBackend(model=model, tokenizer=tok, name="tiny-seed0")
    out = backend.complete([{"role": "user", "content": "Is 2 + 3 = 6?"}], max_tokens=8,
                           temperature=0.0)
    assert isinstance(out, str)
    assert backend.complete([{"role": "user", "content": "Is 2 + 3 = 6?"}], max_tokens=8,
                            temperature=0.0) == out  # greedy

    # from a path: loaded on the first uncached request, not before, and never on a cached rerun
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    lazy = LocalBackend(tmp_path / "tiny", dtype="fp32", device="cpu")
    critic = Critic(lazy, cache_dir=tmp_path / "cache", max_tokens=8)
    assert lazy.model is None and critic.name == f"critic {tmp_path / 'tiny'}"
    reply = critic.complete(critic.messages(TASK, ATTEMPT))
    assert isinstance(reply, str) and lazy.model is not None
    assert reply.strip()  # gibberish from the random tiny model, but text
    fresh = LocalBackend(tmp_path / "tiny", dtype="fp32", device="cpu")
    assert Critic(fresh, cache_dir=tmp_path / "cache", max_tokens=8).review(
        TASK, ATTEMPT).feedback == reply.strip()
    assert fresh.model is None
