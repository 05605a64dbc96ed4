"""Inference for the server: a token-by-token decode loop (the same loop serves streaming and
non-streaming requests), incremental detokenization, and completion log-probabilities (used by the
swap gate and by ``POST /v1/score``).

Every function takes the model explicitly: the server hands each request the model snapshot that
was active when the request started, so a hot swap never changes the weights under a request.
"""

from __future__ import annotations

import threading
from typing import Any, Iterator, Sequence

import torch

from ..experience import Message
from ..generation import stop_token_ids
from ..tokens import Sequence_, collate, context_ids, response_ids, response_logits


class Tokenizer:
    """A tokenizer shared by request threads. Fast tokenizers are not guaranteed thread-safe
    (the Rust object is borrowed mutably when settings change), so every call takes a lock; the
    calls are microseconds, the lock is never held across a model forward."""

    def __init__(self, tok: Any):
        self.tok = tok
        self._lock = threading.Lock()
        self.stop_ids = set(stop_token_ids(tok))

    def prompt_ids(self, messages: list[Message]) -> list[int]:
        with self._lock:
            return context_ids(self.tok, messages)

    def response_ids(self, text: str) -> list[int]:
        with self._lock:
            return response_ids(self.tok, text)

    def decode(self, ids: Sequence[int]) -> str:
        with self._lock:
            return self.tok.decode(list(ids), skip_special_tokens=True)


@torch.no_grad()
def decode_ids(model: Any, prompt_ids: list[int], *, max_new_tokens: int, stop_ids: set[int],
               temperature: float = 0.0, top_p: float = 1.0,
               seed: int | None = None) -> Iterator[int]:
    """Yield generated token ids one at a time (KV cache, batch of one). Greedy when
    ``temperature <= 0``. Stops after a stop id (which is yielded) or ``max_new_tokens``.

    Sampling uses a generator of its own, so concurrent requests (and the learner thread, which
    reseeds torch's global RNG) never disturb each other's randomness.
    """
    device = next(model.parameters()).device
    gen = None
    if temperature > 0:
        gen = torch.Generator(device=device)
        if seed is not None:
            gen.manual_seed(int(seed))
        else:
            gen.seed()
    inputs = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    past = None
    for _ in range(max_new_tokens):
        out = model(input_ids=inputs, past_key_values=past, use_cache=True, logits_to_keep=1)
        logits = out.logits[0, -1].float()
        past = out.past_key_values
        if temperature <= 0:
            nxt = int(logits.argmax())
        else:
            probs = torch.softmax(logits / temperature, dim=-1)
            if top_p < 1.0:
                sorted_p, order = probs.sort(descending=True)
                keep = sorted_p.cumsum(0) - sorted_p < top_p
                keep[0] = True
                probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_p[keep])
            nxt = int(torch.multinomial(probs, 1, generator=gen))
        yield nxt
        if nxt in stop_ids:
            return
        inputs = torch.tensor([[nxt]], dtype=torch.long, device=device)


class TextStream:
    """Incremental detokenization: feed ids, get the new text. Holds back text that ends in an
    incomplete UTF-8 sequence; decodes a short window (not the whole answer) each step, diffing
    the window with and without the new token, so a tokenizer that treats the first token of a
    decode specially still yields the right deltas."""

    def __init__(self, tok: Tokenizer):
        self.tok = tok
        self.ids: list[int] = []
        self._prefix = 0
        self._read = 0
        self.text = ""

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix_text = self.tok.decode(self.ids[self._prefix:self._read])
        new_text = self.tok.decode(self.ids[self._prefix:])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            delta = new_text[len(prefix_text):]
            self._prefix, self._read = self._read, len(self.ids)
            self.text += delta
            return delta
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end)."""
        prefix_text = self.tok.decode(self.ids[self._prefix:self._read])
        new_text = self.tok.decode(self.ids[self._prefix:])
        delta = new_text[len(prefix_text):] if len(new_text) > len(prefix_text) else ""
        self._prefix = self._read = len(self.ids)
        self.text += delta
        return delta


@torch.no_grad()
def completion_logprobs(model: Any, tok: Tokenizer,
                        items: Sequence[tuple[list[Message], str]],
                        batch_size: int = 8) -> list[tuple[float, int]]:
    """``(sum of log-probs, n tokens)`` of each completion given its chat prompt (rendered up to
    the assistant turn), as the model would produce it. No end-of-turn token is scored."""
    seqs = []
    for messages, completion in items:
        resp = tok.response_ids(completion)
        if not resp:
            raise ValueError(f"completion {completion!r:.40} has no tokens")
        seqs.append(Sequence_(tok.prompt_ids(messages), resp))
    device = next(model.parameters()).device
    pad = tok.tok.pad_token_id if tok.tok.pad_token_id is not None else 0
    out: list[tuple[float, int]] = []
    for i in range(0, len(seqs), batch_size):
        chunk = seqs[i:i + batch_size]
        batch = collate(chunk, pad).to(device)
        logp = torch.log_softmax(response_logits(model, batch), dim=-1)
        tok_lp = logp.gather(1, batch.response_tokens[:, None]).squeeze(1)
        counts = batch.response_mask.sum(1).tolist()
        out += [(float(t.sum()), int(n)) for t, n in zip(tok_lp.split(counts), counts)]
    return out
