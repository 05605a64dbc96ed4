"""``experiential serve``: an OpenAI-compatible chat server that learns from feedback.

Endpoints (all but ``GET /health`` need ``Authorization: Bearer <key>`` when keys are set):

``POST /v1/chat/completions``  chat (``stream: true`` for SSE); every answer has a ``chatcmpl-`` id
``GET  /v1/models``            the served model, with the active adapter version
``POST /v1/feedback``          ``{response_id, feedback, corrected_answer?, id?}``: store an
                               experience
``POST /v1/learn``             start an EL update now (``{"wait": true}`` to block until it is done)
``GET  /v1/learn``             learner status: running job, pending experiences, past jobs
``GET  /v1/adapters``          versions with their metrics, and which is active
``POST /v1/adapters/{v}/activate``  serve version ``v`` (or ``base``); ``?force=true`` for one the
                               gate refused
``POST /v1/score``             ``{messages, completion}`` -> log-probability under the served model
``GET  /health``               liveness, no key needed
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from ..config import ELConfig
from ..experience import Experience, Message
from ..store import ExperienceStore
from .auth import APIKeyMiddleware, BodyLimitMiddleware, resolve_api_keys
from .engine import TextStream, Tokenizer, completion_logprobs, decode_ids
from .learner import AdapterRegistry, Gate, Learner, ResponseLog, UnknownVersion, _clean, _freeze
from .schemas import ChatCompletionRequest, FeedbackRequest, LearnRequest, ScoreRequest

log = logging.getLogger("experiential.serve")

DEFAULT_MAX_BODY = 1 << 20


class ServerState:
    """Everything the endpoints share: tokenizer, store, response log, registry, learner."""

    def __init__(self, model: Any, tokenizer: Any, *, store_path: str | Path,
                 state_dir: str | Path, config: ELConfig, learn_every: int | None,
                 gate: Gate | None, model_name: str, max_prompt_tokens: int,
                 default_max_tokens: int, max_tokens_limit: int, default_temperature: float,
                 trainer_factory: Callable[..., Any] | None, auto_activate: bool,
                 distill_corrections: bool):
        self.model_name = model_name
        self.tok = Tokenizer(tokenizer)
        self.max_prompt_tokens = max_prompt_tokens
        self.default_max_tokens = default_max_tokens
        self.max_tokens_limit = max_tokens_limit
        self.default_temperature = default_temperature
        self.context_window = getattr(getattr(model, "config", None), "max_position_embeddings",
                                      None)
        self.created = int(time.time())
        self.store = ExperienceStore(store_path)
        self.responses = ResponseLog(store_path)
        self.registry = AdapterRegistry(_freeze(model), self.store, state_dir)
        self.learner = Learner(base_model=model, tokenizer=tokenizer, store=self.store,
                               registry=self.registry, responses=self.responses, config=config,
                               learn_every=learn_every, gate=gate,
                               trainer_factory=trainer_factory, auto_activate=auto_activate,
                               distill_corrections=distill_corrections, serving_tok=self.tok)

    def close(self) -> None:
        self.learner.close()
        self.responses.close()
        self.store.close()

    # -- request checks ------------------------------------------------------------------------
    def prompt_ids(self, messages: list[Message]) -> list[int]:
        try:
            ids = self.tok.prompt_ids(messages)
        except Exception as e:  # the chat template refused the conversation
            raise _error(400, f"cannot render the messages with the model's chat template: {e}")
        if len(ids) > self.max_prompt_tokens:
            raise _error(400, f"prompt is {len(ids)} tokens, over the limit of "
                              f"{self.max_prompt_tokens} tokens; shorten the conversation",
                         "prompt_too_long")
        return ids

    def max_new_tokens(self, req: ChatCompletionRequest, n_prompt: int) -> int:
        n = req.max_completion_tokens or req.max_tokens or self.default_max_tokens
        if n > self.max_tokens_limit:
            raise _error(400, f"max_tokens={n} is over this server's limit of "
                              f"{self.max_tokens_limit}")
        if self.context_window and n_prompt + n > self.context_window:
            if req.max_completion_tokens or req.max_tokens:
                raise _error(400, f"prompt ({n_prompt} tokens) plus max_tokens ({n}) exceeds "
                                  f"the model's context of {self.context_window} tokens",
                             "context_length_exceeded")
            n = max(1, self.context_window - n_prompt)
        return n


def _error(status: int, message: str, code: str | None = None) -> HTTPException:
    exc = HTTPException(status_code=status, detail=message)
    exc.code = code  # type: ignore[attr-defined]
    return exc


def _error_response(status: int, message: str, code: str | None = None,
                    headers: dict[str, str] | None = None) -> JSONResponse:
    type_ = {401: "authentication_error", 404: "not_found_error", 500: "server_error"}.get(
        status, "invalid_request_error")
    return JSONResponse({"error": {"message": message, "type": type_, "code": code}},
                        status_code=status, headers=headers)


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def create_app(model: Any, tokenizer: Any, *, store_path: str | Path | None = None,
               state_dir: str | Path = "experiential-serve", config: ELConfig | None = None,
               learn_every: int | None = 8, api_keys: str | Iterable[str] | None = None,
               gate: Gate | str | Path | None = None, gate_margin: float = 0.05,
               model_name: str = "experiential", max_body_bytes: int = DEFAULT_MAX_BODY,
               max_prompt_tokens: int = 4096, default_max_tokens: int = 256,
               max_tokens_limit: int = 4096, default_temperature: float = 0.0,
               trainer_factory: Callable[..., Any] | None = None, auto_activate: bool = True,
               distill_corrections: bool = True) -> FastAPI:
    """The server as a FastAPI app.

    ``model``/``tokenizer``: the base model (kept pristine; versions are copies of it plus an
    adapter). ``store_path``: the experience store (default ``state_dir/experiences.sqlite``).
    ``learn_every``: learn after this many new experiences (``None`` or 0: only on
    ``POST /v1/learn``). ``api_keys``: keys, or ``None`` to read ``$EXPERIENTIAL_API_KEYS``; an
    empty list disables authentication. ``gate``: a :class:`Gate` or the path of a JSONL check set
    (``{"prompt", "expected"}`` per line) with ``gate_margin``. ``trainer_factory(model, tok,
    config)`` replaces the default :class:`~experiential.trainer.ExperientialTrainer`.
    ``app.state.server`` is the :class:`ServerState`.
    """
    state_dir = Path(state_dir)
    store_path = Path(store_path) if store_path is not None else state_dir / "experiences.sqlite"
    if config is None:
        config = ELConfig(progress=False)
    if gate is not None and not isinstance(gate, Gate):
        gate = Gate.from_jsonl(gate, margin=gate_margin)
    state = ServerState(model, tokenizer, store_path=store_path, state_dir=state_dir,
                        config=config, learn_every=learn_every, gate=gate, model_name=model_name,
                        max_prompt_tokens=max_prompt_tokens, default_max_tokens=default_max_tokens,
                        max_tokens_limit=max_tokens_limit, default_temperature=default_temperature,
                        trainer_factory=trainer_factory, auto_activate=auto_activate,
                        distill_corrections=distill_corrections)

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        yield
        state.close()

    app = FastAPI(title="experiential", lifespan=lifespan)
    app.state.server = state
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    app.add_middleware(APIKeyMiddleware, keys=resolve_api_keys(api_keys))  # outermost

    # -- errors --------------------------------------------------------------------------------
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error_response(exc.status_code, str(exc.detail), getattr(exc, "code", None),
                               getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        for e in errors:
            if e.get("type") == "json_invalid":
                pos = e["loc"][-1] if e.get("loc") else "?"
                detail = (e.get("ctx") or {}).get("error", "JSON decode error")
                return _error_response(400, f"request body is not valid JSON: {detail} "
                                            f"(at character {pos})", "invalid_json")
            if tuple(e.get("loc", ())) == ("body",):
                what = "missing" if e.get("type") == "missing" else "not a JSON object"
                return _error_response(400, f"request body is {what}: send a JSON object with "
                                            "Content-Type: application/json", "invalid_body")
        parts = []
        for e in errors:
            loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
            msg = e.get("msg", "invalid")
            parts.append(f"field '{loc}': {msg}" if loc else msg)
        return _error_response(422, "invalid request: " + "; ".join(parts), "invalid_request")

    # -- endpoints -----------------------------------------------------------------------------
    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{
            "id": state.model_name, "object": "model", "created": state.created,
            "owned_by": "experiential",
            "adapter_version": state.registry.current().version}]}

    @app.post("/v1/chat/completions")
    def chat_completions(req: ChatCompletionRequest) -> Any:
        try:
            messages = req.prompt()
        except ValueError as e:
            raise _error(400, str(e))
        prompt_ids = state.prompt_ids(messages)
        max_new = state.max_new_tokens(req, len(prompt_ids))
        temperature = state.default_temperature if req.temperature is None else req.temperature
        top_p = 1.0 if req.top_p is None else req.top_p
        served = state.registry.current()  # this request's model, whatever swaps happen next
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        headers = {"x-adapter-version": served.version}

        def tokens() -> Iterator[int]:
            return decode_ids(served.model, prompt_ids, max_new_tokens=max_new,
                              stop_ids=state.tok.stop_ids, temperature=temperature, top_p=top_p,
                              seed=req.seed)

        if not req.stream:
            ids = list(tokens())
            finish = "stop" if ids and ids[-1] in state.tok.stop_ids else "length"
            text = state.tok.decode(ids)
            state.responses.record(rid, messages, text, served.version, finish)
            return JSONResponse({
                "id": rid, "object": "chat.completion", "created": created,
                "model": state.model_name, "adapter_version": served.version,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "logprobs": None, "finish_reason": finish}],
                "usage": {"prompt_tokens": len(prompt_ids), "completion_tokens": len(ids),
                          "total_tokens": len(prompt_ids) + len(ids)}}, headers=headers)

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            return _sse({"id": rid, "object": "chat.completion.chunk", "created": created,
                         "model": state.model_name, "adapter_version": served.version,
                         "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                      "finish_reason": finish}]})

        def events() -> Iterator[str]:
            yield chunk({"role": "assistant", "content": ""})
            stream = TextStream(state.tok)
            finish, n = "length", 0
            try:
                for t in tokens():
                    n += 1
                    if t in state.tok.stop_ids:
                        finish = "stop"
                    delta = stream.push(t)
                    if delta:
                        yield chunk({"content": delta})
                tail = stream.flush()
                if tail:
                    yield chunk({"content": tail})
            except Exception as e:  # headers are sent: report in-band
                log.exception("generation failed for %s", rid)
                yield _sse({"error": {"message": f"generation failed: {e}",
                                      "type": "server_error", "code": None}})
                yield "data: [DONE]\n\n"
                return
            state.responses.record(rid, messages, stream.text, served.version, finish)
            yield chunk({}, finish)
            if req.stream_options is not None and req.stream_options.include_usage:
                yield _sse({"id": rid, "object": "chat.completion.chunk", "created": created,
                            "model": state.model_name, "choices": [],
                            "usage": {"prompt_tokens": len(prompt_ids), "completion_tokens": n,
                                      "total_tokens": len(prompt_ids) + n}})
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={**headers, "cache-control": "no-cache",
                                          "x-accel-buffering": "no"})

    @app.post("/v1/feedback")
    def feedback(req: FeedbackRequest) -> Any:
        rec = state.responses.get(req.response_id)
        if rec is None:
            raise _error(404, f"unknown response id {req.response_id!r}: no answer with this id "
                              "was given by this server (use the 'id' of a chat completion, "
                              "'chatcmpl-...')", "unknown_response_id")
        fb = req.feedback.strip()
        corrected = req.corrected_answer if req.corrected_answer and \
            req.corrected_answer.strip() else None
        if not fb and corrected is None:
            raise _error(400, "feedback is empty: send 'feedback' text, a 'corrected_answer', "
                              "or both", "empty_feedback")
        text = fb
        if corrected is not None:
            text = (fb + "\n\n" if fb else "") + f"A better answer: {corrected}"
        metadata = dict(req.metadata or {})
        metadata.update(source="serve", response_id=req.response_id,
                        adapter_version=rec["adapter_version"])
        if corrected is not None:
            metadata["corrected_answer"] = corrected
        try:
            exp = Experience(prompt=rec["messages"], attempt=rec["answer"], feedback=text,
                             metadata=metadata, **({"id": req.id} if req.id else {}))
        except ValueError as e:
            raise _error(400, str(e))
        duplicate = False
        try:
            state.store.append(exp)  # returns after a synchronous=FULL commit
        except ValueError:  # the id is taken: a retry of the same feedback, or a clash
            old = state.store.get(exp.id)
            if old.metadata.get("response_id") != req.response_id or old.feedback != text:
                raise _error(409, f"experience id {exp.id!r} is already used by a different "
                                  "feedback", "duplicate_id")
            duplicate = True
        learning = None if duplicate else state.learner.notify()
        return {"object": "feedback", "id": exp.id, "response_id": req.response_id,
                "stored": True, "duplicate": duplicate, "pending": state.learner.pending(),
                "learning": learning}

    @app.post("/v1/learn")
    def learn(req: LearnRequest | None = None) -> Any:
        req = req or LearnRequest()
        started = state.learner.trigger(reason="requested", force=req.force)
        status = started["status"]
        if status == "no_experiences":
            raise _error(409, "no experiences stored yet: post feedback first", "no_experiences")
        if status == "closed":
            raise _error(503, "the server is shutting down")
        if status == "nothing_new":
            return {"status": "nothing_new", "message": "no new experiences since the last "
                    "version; pass force=true to learn again anyway"}
        if req.wait:
            job = state.learner.wait(started["version"], req.timeout)
            return {"status": job["status"], "version": started["version"], "job": _clean(job)}
        return JSONResponse(started, status_code=202 if status == "started" else 200)

    @app.get("/v1/learn")
    def learn_status() -> Any:
        return state.learner.status()

    @app.get("/v1/adapters")
    def adapters(include_ids: bool = False) -> Any:
        data = state.registry.listing()
        if not include_ids:
            for d in data:
                d.pop("experiences", None)
        return {"object": "list", "active": state.registry.current().version,
                "learning": state.learner.status()["running"], "data": data}

    @app.post("/v1/adapters/{version}/activate")
    def activate(version: str, force: bool = False) -> Any:
        try:
            served = state.registry.activate(version, force=force)
        except UnknownVersion:
            raise _error(404, f"unknown adapter version {version!r}; see GET /v1/adapters",
                         "unknown_version")
        except PermissionError as e:
            raise _error(409, str(e), "refused_by_gate")
        return {"active": served.version}

    @app.post("/v1/score")
    def score(req: ScoreRequest) -> Any:
        messages = [m.to_message() for m in req.messages]
        state.prompt_ids(messages)
        served = state.registry.current()
        try:
            (lp, n), = completion_logprobs(served.model, state.tok, [(messages, req.completion)])
        except ValueError as e:
            raise _error(400, str(e))
        return {"object": "score", "logprob": lp, "n_tokens": n, "mean_logprob": lp / n,
                "adapter_version": served.version}

    return app


def load_app(model_name_or_path: str = "default", *, dtype: str = "auto", device: str = "auto",
             **kwargs: Any) -> FastAPI:
    """Load a model (embedded name, local directory, GGUF file or hub id; see
    :func:`experiential.models.load_model`) and build the app around it. ``kwargs`` go to
    :func:`create_app`; ``model_name`` defaults to the model's name."""
    from ..models import load_model

    model, tok = load_model(model_name_or_path, dtype=dtype, device=device)
    kwargs.setdefault("model_name", Path(str(model_name_or_path)).name)
    return create_app(model, tok, **kwargs)


def serve(model_name_or_path: str = "default", host: str = "127.0.0.1", port: int = 8000, *,
          state_dir: str | Path = "experiential-serve", store_path: str | Path | None = None,
          config: ELConfig | None = None, learn_every: int | None = 8,
          api_keys: str | Iterable[str] | None = None, gate: str | Path | None = None,
          gate_margin: float = 0.05, dtype: str = "auto", device: str = "auto",
          log_level: str = "info", **app_kwargs: Any) -> None:
    """Load the model and run the server with uvicorn (blocks until interrupted). Keys: the
    ``api_keys`` argument, else ``$EXPERIENTIAL_API_KEYS``; serving beyond loopback without keys
    logs a warning."""
    import uvicorn

    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO))
    keys = resolve_api_keys(api_keys)
    if not keys and not _is_loopback(host):
        log.warning("serving on %s without API keys: anyone who can reach this port can read "
                    "answers and change the model (set %s)", host, "EXPERIENTIAL_API_KEYS")
    app = load_app(model_name_or_path, dtype=dtype, device=device, store_path=store_path,
                   state_dir=state_dir, config=config, learn_every=learn_every, api_keys=keys,
                   gate=gate, gate_margin=gate_margin, **app_kwargs)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
