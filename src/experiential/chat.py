"""``experiential chat``: talk to an ``experiential serve`` server from a terminal and teach it.

Type a message and the answer streams in. After each answer you may type feedback (Enter skips
it); it is sent to ``/v1/feedback`` for that answer and becomes an experience the server learns
from. Commands:

``/fb TEXT``       feedback on the last answer (any time)
``/better TEXT``   a corrected answer for the last answer (stored with the feedback)
``/learn``         ask the server to learn from the new experiences now
``/status``        learner status and the active adapter version
``/adapters``      list adapter versions; ``/activate VERSION`` switches (``base`` = no adapter)
``/reset``         start a new conversation
``/quit``          leave
"""

from __future__ import annotations

import json
import sys
from typing import Any, Callable, TextIO

import httpx

HELP = __doc__.split("Commands:\n", 1)[1].replace("``", "")


class ChatError(RuntimeError):
    """The server answered with an error; the message is the server's."""


def _raise_for(r: httpx.Response) -> None:
    if r.status_code < 400:
        return
    try:
        msg = r.json()["error"]["message"]
    except Exception:
        msg = r.text[:300] or r.reason_phrase
    raise ChatError(f"{r.status_code}: {msg}")


class ChatClient:
    """A small client for the server's endpoints (used by :func:`run_chat`)."""

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = 600.0,
                 transport: httpx.BaseTransport | None = None):
        base_url = base_url.rstrip("/")
        if base_url.endswith("/v1"):
            base_url = base_url[:-3]
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, transport=transport,
                                 timeout=httpx.Timeout(timeout, connect=10.0))

    def close(self) -> None:
        self.http.close()

    def get(self, path: str) -> Any:
        r = self.http.get(path)
        _raise_for(r)
        return r.json()

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        r = self.http.post(path, json=body if body is not None else {})
        _raise_for(r)
        return r.json()

    def chat_stream(self, messages: list[dict[str, str]], on_text: Callable[[str], None],
                    **params: Any) -> tuple[str, str, str]:
        """Stream an answer; calls ``on_text`` with each piece. Returns (id, text, version)."""
        body = {"messages": messages, "stream": True,
                **{k: v for k, v in params.items() if v is not None}}
        rid, version, parts = "", "", []
        with self.http.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code >= 400:
                r.read()
                _raise_for(r)
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: "):]
                if data == "[DONE]":
                    break
                obj = json.loads(data)
                if "error" in obj:
                    raise ChatError(obj["error"].get("message", "generation failed"))
                rid = obj.get("id", rid)
                version = obj.get("adapter_version", version)
                for choice in obj.get("choices", []):
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        parts.append(piece)
                        on_text(piece)
        return rid, "".join(parts), version


def run_chat(base_url: str, api_key: str | None = None, input_fn: Callable[[str], str] = input,
             output: TextIO = sys.stdout, *, temperature: float | None = None,
             max_tokens: int | None = None, ask_feedback: bool = True,
             transport: httpx.BaseTransport | None = None) -> int:
    """The interactive loop. Returns a process exit code (1 if the server cannot be reached)."""

    def say(text: str = "", end: str = "\n") -> None:
        output.write(text + end)
        output.flush()

    client = ChatClient(base_url, api_key, transport=transport)
    history: list[dict[str, str]] = []
    last_id: str | None = None
    try:
        try:
            info = client.get("/v1/models")["data"][0]
        except (httpx.HTTPError, ChatError) as e:
            say(f"cannot reach the server at {base_url}: {e}")
            return 1
        say(f"connected to {info['id']} (adapter: {info.get('adapter_version', '?')}); "
            "/help for commands, /quit to leave")

        def feedback(text: str = "", corrected: str | None = None) -> None:
            if last_id is None:
                say("no answer yet to give feedback on")
                return
            body: dict[str, Any] = {"response_id": last_id, "feedback": text}
            if corrected:
                body["corrected_answer"] = corrected
            r = client.post("/v1/feedback", body)
            learning = r.get("learning") or {}
            note = f"; learning {learning['version']} started" \
                if learning.get("status") == "started" else ""
            say(f"feedback stored ({r['pending']} new experience(s) waiting{note})")

        while True:
            try:
                line = input_fn("you> ")
            except (EOFError, KeyboardInterrupt):
                say()
                break
            line = line.strip()
            if not line:
                continue
            try:
                if line in ("/quit", "/exit", "/q"):
                    break
                elif line == "/help":
                    say(HELP.rstrip())
                elif line == "/fb" or line.startswith("/fb "):
                    text = line[3:].strip()
                    if not text:
                        say("usage: /fb TEXT")
                    else:
                        feedback(text)
                elif line == "/better" or line.startswith("/better "):
                    text = line[7:].strip()
                    if not text:
                        say("usage: /better CORRECTED ANSWER")
                    else:
                        feedback(corrected=text)
                elif line == "/learn":
                    r = client.post("/v1/learn", {})
                    if r.get("status") == "started":
                        say(f"learning {r['version']} started (see /status)")
                    elif r.get("status") == "running":
                        say(f"learning {r['version']} is already running")
                    else:
                        say(r.get("message") or r.get("status", "?"))
                elif line == "/status":
                    s = client.get("/v1/learn")
                    a = client.get("/v1/adapters")
                    say(f"active adapter: {a['active']}; learning: {s['running'] or 'idle'}; "
                        f"{s['pending']} new experience(s) waiting")
                    for job in s["jobs"][-3:]:
                        say(f"  {job['version']}: {job['status']}"
                            + (f" ({job['error']})" if job.get("error") else ""))
                elif line == "/adapters":
                    a = client.get("/v1/adapters")
                    for v in a["data"]:
                        m = v.get("metrics") or {}
                        gap = (m.get("gap_after") or {}).get("mean_gap")
                        extra = f", residual gap {gap:+.3f}" if gap is not None else ""
                        mark = "*" if v["active"] else " "
                        refused = " [refused by gate]" if m.get("status") == "refused" else ""
                        say(f"{mark} {v['version']}: {v['n_experiences']} experience(s)"
                            f"{extra}{refused}")
                elif line.startswith("/activate"):
                    version = line[len("/activate"):].strip()
                    if not version:
                        say("usage: /activate VERSION (or base)")
                    else:
                        r = client.post(f"/v1/adapters/{version}/activate")
                        say(f"now serving {r['active']}")
                elif line == "/reset":
                    history, last_id = [], None
                    say("new conversation")
                elif line.startswith("/"):
                    say(f"unknown command {line.split()[0]}; /help lists the commands")
                else:
                    history.append({"role": "user", "content": line})
                    output.write("assistant> ")
                    try:
                        rid, text, _ = client.chat_stream(
                            history, lambda s: (output.write(s), output.flush()),
                            temperature=temperature, max_tokens=max_tokens)
                    except BaseException:
                        history.pop()
                        say()
                        raise
                    say()
                    history.append({"role": "assistant", "content": text})
                    last_id = rid
                    if ask_feedback:
                        try:
                            fb = input_fn("feedback (Enter to skip)> ").strip()
                        except (EOFError, KeyboardInterrupt):
                            say()
                            break
                        if fb in ("/quit", "/exit", "/q"):
                            break
                        if fb:
                            feedback(fb)
            except ChatError as e:
                say(f"error: {e}")
            except httpx.HTTPError as e:
                say(f"connection error: {e}")
    finally:
        client.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse
    import os

    p = argparse.ArgumentParser(prog="experiential chat", description=__doc__.split("\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--api-key", default=None,
                   help="default: the first key of $EXPERIENTIAL_API_KEYS")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--no-feedback-prompt", action="store_true")
    a = p.parse_args(argv)
    key = a.api_key or (os.environ.get("EXPERIENTIAL_API_KEYS", "").split(",")[0].strip() or None)
    return run_chat(a.url, key, temperature=a.temperature, max_tokens=a.max_tokens,
                    ask_feedback=not a.no_feedback_prompt)


if __name__ == "__main__":
    sys.exit(main())
