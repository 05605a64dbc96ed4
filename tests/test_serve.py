"""``experiential serve`` against a real uvicorn server on 127.0.0.1 with the tiny Llama: chat and
feedback round trip, learning in the direction of the feedback, hot swap and rollback, the gate,
learner failures, concurrency, limits and auth, streaming, the terminal client."""

from __future__ import annotations

import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

import uvicorn  # noqa: E402
from conftest import build_tiny_model, build_tiny_tokenizer, running  # noqa: E402

from experiential.config import ELConfig  # noqa: E402
from experiential.context import teacher_messages  # noqa: E402
from experiential.experience import Experience  # noqa: E402
from experiential.generation import generate  # noqa: E402
from experiential.serve import Gate, create_app  # noqa: E402
from experiential.store import ExperienceStore  # noqa: E402

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]
# On the tiny model (seed 0), "A better answer: <this>" in the teacher's context makes this answer
# more likely than the student finds it without the feedback: there is something to distil.
CORRECTED = "Paris is the capital."


def tiny_config(**kw: Any) -> ELConfig:
    base = dict(max_steps=20, batch_size=4, micro_batch_size=4, learning_rate=1e-2,
                progress=False, retention=False, anchor_weight=0.0, stop_kl=None, lora_r=4,
                lora_alpha=8)
    base.update(kw)
    return ELConfig(**base)


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


@pytest.fixture()
def server(tmp_path, tok):
    """Factory: ``with server(**create_app_kwargs) as (client, app): ...``."""

    @contextmanager
    def make(*, headers: dict[str, str] | None = None, **kw: Any):
        kw.setdefault("config", tiny_config())
        kw.setdefault("learn_every", None)
        kw.setdefault("api_keys", [])
        kw.setdefault("default_max_tokens", 24)
        kw.setdefault("state_dir", tmp_path / "state")
        app = create_app(build_tiny_model(len(tok)), tok, **kw)
        with running(app) as url, httpx.Client(base_url=url, timeout=120,
                                               headers=headers or {}) as client:
            yield client, app

    return make


def chat(client: httpx.Client, messages=PROMPT, **kw: Any) -> dict[str, Any]:
    r = client.post("/v1/chat/completions", json={"messages": messages, **kw})
    assert r.status_code == 200, r.text
    return r.json()


def score(client: httpx.Client, messages, completion: str) -> float:
    r = client.post("/v1/score", json={"messages": messages, "completion": completion})
    assert r.status_code == 200, r.text
    return r.json()["logprob"]


def sse_events(client: httpx.Client, body: dict[str, Any]) -> list[Any]:
    out = []
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line:
                assert line.startswith("data: "), line
                data = line[len("data: "):]
                out.append(data if data == "[DONE]" else json.loads(data))
    return out


def wait_idle(client: httpx.Client, timeout: float = 60) -> dict[str, Any]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = client.get("/v1/learn").json()
        if s["running"] is None:
            return s
        time.sleep(0.05)
    raise AssertionError("learner still running")


# -- chat and feedback --------------------------------------------------------------------------
def test_chat_then_feedback_stores_the_experience(server, tmp_path):
    with server() as (client, app):
        models = client.get("/v1/models").json()
        assert models["data"][0]["id"] == "experiential"
        assert models["data"][0]["adapter_version"] == "base"
        out = chat(client)
        rid, answer = out["id"], out["choices"][0]["message"]["content"]
        assert rid.startswith("chatcmpl-") and out["object"] == "chat.completion"
        assert out["usage"]["completion_tokens"] > 0 and answer
        assert chat(client)["id"] != rid  # every response has its own id

        r = client.post("/v1/feedback", json={"response_id": rid, "feedback": "Wrong city."})
        assert r.status_code == 200, r.text
        first = r.json()
        r = client.post("/v1/feedback", json={"response_id": rid, "feedback": "Still wrong.",
                                               "corrected_answer": CORRECTED, "id": "fb-2"})
        assert r.status_code == 200 and r.json()["id"] == "fb-2" and r.json()["pending"] == 2
        # a retry with the same idempotency key is acknowledged and not stored twice
        r = client.post("/v1/feedback", json={"response_id": rid, "feedback": "Still wrong.",
                                               "corrected_answer": CORRECTED, "id": "fb-2"})
        assert r.status_code == 200 and r.json()["duplicate"] is True
        r = client.post("/v1/feedback", json={"response_id": rid, "feedback": "other",
                                               "id": "fb-2"})
        assert r.status_code == 409

        # read back through a separate connection: the acknowledged writes are committed
        with ExperienceStore(tmp_path / "state" / "experiences.sqlite") as store:
            exps = store.list()
        assert [e.id for e in exps] == [first["id"], "fb-2"]
        for e in exps:
            assert e.prompt == PROMPT and e.attempt == answer
            assert e.metadata["response_id"] == rid and e.metadata["adapter_version"] == "base"
        assert exps[0].feedback == "Wrong city."
        assert exps[1].feedback == f"Still wrong.\n\nA better answer: {CORRECTED}"
        assert exps[1].metadata["corrected_answer"] == CORRECTED


def test_streaming_joins_to_the_non_streaming_greedy_answer(server, tok):
    with server(default_max_tokens=40) as (client, app):
        body = {"messages": PROMPT, "max_tokens": 40, "temperature": 0}
        plain = chat(client, **{k: v for k, v in body.items() if k != "messages"})
        text = plain["choices"][0]["message"]["content"]
        events = sse_events(client, body)
        assert events[-1] == "[DONE]"
        chunks = events[:-1]
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        pieces = [c["choices"][0]["delta"].get("content", "") for c in chunks]
        assert sum(1 for p in pieces if p) > 3  # really streamed, not one blob
        assert "".join(pieces) == text
        assert chunks[-1]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
        # usage on request, as a last chunk without choices
        usage = sse_events(client, {**body, "stream_options": {"include_usage": True}})[-2]
        assert usage["choices"] == [] and usage["usage"] == plain["usage"]
        # and both equal the library's own batched greedy generation on the served model
        model = app.state.server.registry.current().model
        assert generate(model, tok, [PROMPT], max_new_tokens=40)[0][0] == text
        # a streamed answer is recorded too: feedback can refer to it
        r = client.post("/v1/feedback", json={"response_id": chunks[0]["id"], "feedback": "ok"})
        assert r.status_code == 200
        assert app.state.server.store.list()[0].attempt == text


def test_sampling_is_reproducible_with_a_seed(server):
    with server() as (client, app):
        a = chat(client, temperature=1.0, seed=7)["choices"][0]["message"]["content"]
        b = chat(client, temperature=1.0, seed=7)["choices"][0]["message"]["content"]
        c = chat(client, temperature=1.0, seed=8)["choices"][0]["message"]["content"]
        assert a == b and a != c


# -- learning, swap, rollback -------------------------------------------------------------------
def test_learning_moves_the_answer_towards_the_feedback_and_rollback_works(server, tmp_path):
    with server() as (client, app):
        out = chat(client)
        rid, answer = out["id"], out["choices"][0]["message"]["content"]
        feedback = "Wrong."
        teacher_view = teacher_messages(Experience(
            PROMPT, answer, f"{feedback}\n\nA better answer: {CORRECTED}"))
        before = score(client, PROMPT, CORRECTED)
        teacher = score(client, teacher_view, CORRECTED)
        assert teacher > before + 2.0  # the precondition: the feedback favours the correction

        r = client.post("/v1/feedback", json={"response_id": rid, "feedback": feedback,
                                               "corrected_answer": CORRECTED})
        exp_id = r.json()["id"]
        r = client.post("/v1/learn", json={"wait": True})
        assert r.status_code == 200 and r.json()["status"] == "activated", r.text
        after = score(client, PROMPT, CORRECTED)
        assert after > before + 3.0, (before, after, teacher)

        listing = client.get("/v1/adapters", params={"include_ids": True}).json()
        assert listing["active"] == "v1"
        v1 = next(v for v in listing["data"] if v["version"] == "v1")
        assert v1["active"] and v1["experiences"] == [exp_id] and v1["n_experiences"] == 1
        m = v1["metrics"]
        assert m["status"] == "ok" and m["n_training_items"] == 2
        assert m["gap_after"]["mean_divergence"] < m["gap_before"]["mean_divergence"]
        assert (Path(v1["path"]) / "adapter_config.json").is_file()
        assert chat(client)["adapter_version"] == "v1"

        # roll back to the base model: exactly the original scores (the base stayed pristine)
        assert client.post("/v1/adapters/base/activate").json() == {"active": "base"}
        assert score(client, PROMPT, CORRECTED) == pytest.approx(before, abs=1e-4)
        # and forward again: v1 reloaded from disk gives the learned scores
        assert client.post("/v1/adapters/v1/activate").json() == {"active": "v1"}
        assert score(client, PROMPT, CORRECTED) == pytest.approx(after, abs=1e-3)
        r = client.post("/v1/adapters/v7/activate")
        assert r.status_code == 404 and "v7" in r.json()["error"]["message"]

        # nothing new: a second learn is refused politely; force retrains (cumulative) as v2
        assert client.post("/v1/learn", json={}).json()["status"] == "nothing_new"

    # a restart on the same state dir serves the active version again
    with server() as (client, app):
        assert client.get("/v1/models").json()["data"][0]["adapter_version"] == "v1"
        assert score(client, PROMPT, CORRECTED) == pytest.approx(after, abs=1e-3)


def test_learn_every_triggers_cumulative_versions_without_blocking_serving(server, tok):
    release = threading.Event()
    entered = threading.Event()

    def slow_trainer(model, tk, cfg):
        from experiential.trainer import ExperientialTrainer

        trainer = ExperientialTrainer(model, tk, cfg)
        real_learn = trainer.learn

        def learn(exps):
            entered.set()
            assert release.wait(60)
            return real_learn(exps)

        trainer.learn = learn
        return trainer

    with server(learn_every=2, trainer_factory=slow_trainer,
                config=tiny_config(max_steps=3)) as (client, app):
        rid = chat(client)["id"]
        ids = [client.post("/v1/feedback", json={"response_id": rid, "feedback": f"fb {i}"}
                           ).json() for i in range(2)]
        assert ids[0]["learning"] is None and ids[1]["learning"]["status"] == "started"
        assert entered.wait(30)
        # the learner is busy: serving still answers, on the base model
        t0 = time.time()
        out = chat(client)
        assert out["adapter_version"] == "base" and time.time() - t0 < 10
        status = client.get("/v1/learn").json()
        assert status["running"] == "v1"
        # a third experience arrives during learning; it is not part of v1
        third = client.post("/v1/feedback", json={"response_id": out["id"], "feedback": "fb 2"})
        release.set()
        wait_idle(client)
        listing = client.get("/v1/adapters", params={"include_ids": True}).json()
        assert listing["active"] == "v1"
        v1 = next(v for v in listing["data"] if v["version"] == "v1")
        assert v1["experiences"] == [ids[0]["id"], ids[1]["id"]]
        assert client.get("/v1/learn").json()["pending"] == 1
        # the fourth makes two new ones: v2 learns from all four (cumulative)
        fourth = client.post("/v1/feedback", json={"response_id": rid, "feedback": "fb 3"})
        assert fourth.json()["learning"]["version"] == "v2"
        wait_idle(client)
        listing = client.get("/v1/adapters", params={"include_ids": True}).json()
        assert listing["active"] == "v2"
        v2 = next(v for v in listing["data"] if v["version"] == "v2")
        assert v2["experiences"] == [ids[0]["id"], ids[1]["id"], third.json()["id"],
                                     fourth.json()["id"]]
        assert chat(client)["adapter_version"] == "v2"


def test_a_failing_update_keeps_experiences_and_the_served_version(server):
    calls = {"n": 0}

    def flaky(model, tk, cfg):
        from experiential.trainer import ExperientialTrainer

        calls["n"] += 1
        trainer = ExperientialTrainer(model, tk, cfg)
        if calls["n"] == 2:  # the second update dies half-way through its steps
            real_loss = trainer.objective.loss
            steps = {"n": 0}

            def loss(*a, **k):
                steps["n"] += 1
                if steps["n"] > 3:
                    raise RuntimeError("simulated crash mid-update")
                return real_loss(*a, **k)

            trainer.objective.loss = loss
        return trainer

    with server(trainer_factory=flaky) as (client, app):
        rid = chat(client)["id"]
        client.post("/v1/feedback", json={"response_id": rid, "feedback": "one",
                                          "corrected_answer": CORRECTED})
        assert client.post("/v1/learn", json={"wait": True}).json()["status"] == "activated"
        v1_score = score(client, PROMPT, CORRECTED)
        client.post("/v1/feedback", json={"response_id": rid, "feedback": "two"})
        r = client.post("/v1/learn", json={"wait": True}).json()
        assert r["status"] == "failed" and "simulated crash" in r["job"]["error"]
        status = client.get("/v1/learn").json()
        assert status["pending"] == 1 and status["jobs"][-1]["status"] == "failed"
        listing = client.get("/v1/adapters").json()
        assert listing["active"] == "v1" and [v["version"] for v in listing["data"]] == [
            "base", "v1"]
        assert score(client, PROMPT, CORRECTED) == pytest.approx(v1_score, abs=1e-5)
        assert len(app.state.server.store) == 2
        adapters_dir = app.state.server.registry.adapters_dir
        assert sorted(p.name for p in adapters_dir.iterdir()) == ["v1"]  # no half-written dir
        # the next attempt works and takes the next free name
        r = client.post("/v1/learn", json={"wait": True}).json()
        assert r["status"] == "activated" and r["version"] == "v2"


def test_gate_passes_an_improvement_and_refuses_a_regression(server, tmp_path):
    check = tmp_path / "check.jsonl"
    check.write_text(json.dumps({"prompt": PROMPT[0]["content"], "expected": CORRECTED}) + "\n")
    with server(gate=check, gate_margin=0.0) as (client, app):
        rid = chat(client)["id"]
        client.post("/v1/feedback", json={"response_id": rid, "feedback": "Wrong.",
                                          "corrected_answer": CORRECTED})
        r = client.post("/v1/learn", json={"wait": True}).json()
        assert r["status"] == "activated", r
        gate = r["job"]["metrics"]["gate"]
        assert gate["passed"] and gate["candidate"] > gate["current"] and gate["against"] == "base"

    # a gate that demands more improvement than learning can give refuses the swap
    app_dir = tmp_path / "other"
    with server(state_dir=app_dir, gate=Gate([{"prompt": PROMPT, "expected": CORRECTED}],
                                             margin=-100.0)) as (client, app):
        rid = chat(client)["id"]
        client.post("/v1/feedback", json={"response_id": rid, "feedback": "Wrong.",
                                          "corrected_answer": CORRECTED})
        r = client.post("/v1/learn", json={"wait": True}).json()
        assert r["status"] == "refused"
        listing = client.get("/v1/adapters").json()
        assert listing["active"] == "base"
        v1 = next(v for v in listing["data"] if v["version"] == "v1")
        assert v1["metrics"]["status"] == "refused" and not v1["active"]
        assert v1["metrics"]["gate"]["passed"] is False
        assert "regressed" in v1["metrics"]["gate"]["reason"]
        assert chat(client)["adapter_version"] == "base"
        r = client.post("/v1/adapters/v1/activate")
        assert r.status_code == 409 and "force" in r.json()["error"]["message"]
        r = client.post("/v1/adapters/v1/activate", params={"force": True})
        assert r.json() == {"active": "v1"}


def test_gate_check_set_errors_name_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "expected": "b"}\n{"prompt": "a"}\n')
    with pytest.raises(ValueError, match="line 2"):
        Gate.from_jsonl(bad)


# -- concurrency --------------------------------------------------------------------------------
def test_500_concurrent_feedback_posts_are_each_stored_once(server, tmp_path):
    with server() as (client, app):
        rids = [chat(client, max_tokens=4)["id"] for _ in range(3)]
        texts = [f"feedback number {i}" for i in range(500)]

        def post(i: int) -> httpx.Response:
            body = {"response_id": rids[i % 3], "feedback": texts[i], "id": f"k{i}"}
            r = client.post("/v1/feedback", json=body)
            if i % 10 == 0:  # a client retry of the same feedback must not duplicate it
                r2 = client.post("/v1/feedback", json=body)
                assert r2.status_code == 200 and r2.json()["duplicate"] is True
            return r

        with ThreadPoolExecutor(max_workers=16) as pool:
            responses = list(pool.map(post, range(500)))
        assert all(r.status_code == 200 for r in responses), \
            [r.text for r in responses if r.status_code != 200][:3]
        assert len({r.json()["id"] for r in responses}) == 500
    with ExperienceStore(tmp_path / "state" / "experiences.sqlite") as store:
        exps = store.list()
    assert len(exps) == 500
    assert sorted(e.feedback for e in exps) == sorted(texts)
    assert {e.id for e in exps} == {f"k{i}" for i in range(500)}
    assert all(e.metadata["response_id"] == rids[int(e.id[1:]) % 3] for e in exps)


# -- errors, limits, auth -----------------------------------------------------------------------
def test_bad_requests_get_clear_4xx_answers(server):
    with server(max_body_bytes=4096, max_prompt_tokens=64) as (client, app):
        def err(r: httpx.Response, status: int) -> str:
            assert r.status_code == status, (r.status_code, r.text)
            return r.json()["error"]["message"]

        msg = err(client.post("/v1/chat/completions", content=b'{"messages": [',
                              headers={"content-type": "application/json"}), 400)
        assert "not valid JSON" in msg
        msg = err(client.post("/v1/chat/completions", json={"messages": "hi"}), 422)
        assert "messages" in msg
        msg = err(client.post("/v1/chat/completions",
                              json={"messages": [{"role": "robot", "content": "x"}]}), 422)
        assert "messages.0.role" in msg
        assert "body" in err(client.post("/v1/chat/completions"), 400)
        assert "n" in err(client.post("/v1/chat/completions", json={"messages": PROMPT, "n": 2}),
                          422)
        assert "stop" in err(client.post("/v1/chat/completions",
                                         json={"messages": PROMPT, "stop": ["\n"]}), 422)
        assert "empty" in err(client.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "  "}]}), 400)
        msg = err(client.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "hello world " * 40}]}), 400)
        assert "over the limit of 64 tokens" in msg
        msg = err(client.post("/v1/chat/completions", json={
            "messages": PROMPT, "max_tokens": 100000}), 400)
        assert "max_tokens" in msg

        msg = err(client.post("/v1/feedback", json={"response_id": "chatcmpl-nope",
                                                    "feedback": "x"}), 404)
        assert "chatcmpl-nope" in msg and "unknown response id" in msg
        rid = chat(client, max_tokens=2)["id"]
        assert "empty" in err(client.post("/v1/feedback", json={"response_id": rid,
                                                                "feedback": " "}), 400)
        assert "colour" in err(client.post("/v1/feedback", json={
            "response_id": rid, "feedback": "x", "colour": 1}), 422)

        big = {"messages": [{"role": "user", "content": "x" * 5000}]}
        assert "too large" in err(client.post("/v1/chat/completions", json=big), 413)

        def chunks():  # no Content-Length: the limit is enforced while reading
            yield b'{"response_id": "' + b"a" * 3000
            yield b"a" * 3000 + b'", "feedback": "x"}'

        assert "too large" in err(client.post("/v1/feedback", content=chunks(),
                                              headers={"content-type": "application/json"}), 413)
        assert "no experiences" in err(client.post("/v1/learn"), 409)
        assert client.get("/nope").status_code == 404


def test_api_keys_guard_every_endpoint_but_health(server, monkeypatch):
    monkeypatch.setenv("EXPERIENTIAL_API_KEYS", "k1, k2")
    with server(api_keys=None) as (client, app):  # keys from the environment
        assert client.get("/health").json() == {"status": "ok"}
        for method, path in [("GET", "/v1/models"), ("POST", "/v1/chat/completions"),
                             ("POST", "/v1/feedback"), ("POST", "/v1/learn"),
                             ("GET", "/v1/learn"), ("GET", "/v1/adapters"),
                             ("POST", "/v1/adapters/base/activate"), ("POST", "/v1/score"),
                             ("GET", "/nope")]:
            r = client.request(method, path, json={})
            assert r.status_code == 401, (path, r.status_code)
            assert "API key" in r.json()["error"]["message"]
            assert r.headers["www-authenticate"] == "Bearer"
        r = client.get("/v1/models", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.json()["error"]["message"] == "invalid API key"
        r = client.get("/v1/models", headers={"Authorization": "k1"})
        assert r.status_code == 401
        for key in ("k1", "k2"):
            r = client.post("/v1/chat/completions", json={"messages": PROMPT, "max_tokens": 2},
                            headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200
        # unauthenticated requests are refused before their (oversized) body is considered
        r = client.post("/v1/feedback", content=b"x" * (2 << 20))
        assert r.status_code == 401


# -- the terminal client ------------------------------------------------------------------------
def test_chat_client_sends_feedback_and_triggers_learning(server, tmp_path):
    from experiential.chat import run_chat

    with server(api_keys=["secret"], headers={"Authorization": "Bearer secret"}) as (client, app):
        url = str(client.base_url)
        script = iter(["What is the capital of France?", "That is wrong, it is Paris.",
                       "/better Paris is the capital.", "/learn", "/status", "/bogus",
                       "/quit"])
        out = io.StringIO()
        assert run_chat(url, api_key="secret", input_fn=lambda _: next(script), output=out) == 0
        text = out.getvalue()
        assert "connected to experiential" in text
        assert "feedback stored (1 new" in text and "feedback stored (2 new" in text
        assert "learning v1 started" in text and "unknown command /bogus" in text
        wait_idle(client)
        exps = app.state.server.store.list()
        assert [e.feedback for e in exps] == ["That is wrong, it is Paris.",
                                              "A better answer: Paris is the capital."]
        answer = exps[0].attempt
        assert answer and answer in text  # the streamed answer was shown
        assert client.get("/v1/adapters").json()["active"] == "v1"

        script = iter(["/fb too late", "/adapters", "/activate base", "/activate v9", "/quit"])
        out = io.StringIO()
        assert run_chat(url, api_key="secret", input_fn=lambda _: next(script), output=out) == 0
        lines = out.getvalue().splitlines()
        assert "no answer yet to give feedback on" in lines
        assert "* v1: 2 experience(s)" in "\n".join(lines)
        assert "now serving base" in lines and any("unknown adapter version" in x for x in lines)
        assert client.get("/v1/adapters").json()["active"] == "base"

        out = io.StringIO()
        assert run_chat(url, api_key="wrong", input_fn=lambda _: "/quit", output=out) == 1
        assert "invalid API key" in out.getvalue()


def test_load_app_serves_a_model_directory(tmp_path, tok):
    from experiential.serve import load_app

    build_tiny_model(len(tok)).save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    app = load_app(str(tmp_path / "tiny"), dtype="fp32", device="cpu", state_dir=tmp_path / "s",
                   config=tiny_config(), learn_every=1, api_keys=[], default_max_tokens=8)
    with running(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert client.get("/v1/models").json()["data"][0]["id"] == "tiny"
        rid = chat(client)["id"]
        r = client.post("/v1/feedback", json={"response_id": rid, "feedback": "no"}).json()
        assert r["learning"] == {"status": "started", "version": "v1"}  # learn_every=1
        wait_idle(client)
        assert chat(client)["adapter_version"] == "v1"
