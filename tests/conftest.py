"""Shared fixtures: a tiny tokenizer and a tiny Llama built from a config in code (no downloads),
and the real embedded models for learning tests (loaded once per session)."""

from __future__ import annotations

import os
import socket
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

import pytest
import torch

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "What is the capital of France? The answer is C. Paris is the capital.",
    "Hint from a reviewer: the correct answer is B because the facial nerve controls taste.",
    "def add(a, b):\n    return a + b\nassert add(1, 2) == 3",
    "The answer is A. The answer is B. The answer is C. The answer is D.",
    "Feedback: your final answer 18 is wrong; the correct answer is 20.",
    "user assistant system hello world numbers 0123456789 ()[]{}:;,.!?'\"",
] * 20


def build_tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(_CORPUS, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<|im_end|>",
                                  bos_token="<|im_start|>")
    tok.chat_template = CHATML
    tok.padding_side = "left"
    return tok


def build_tiny_model(vocab_size: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=1024, tie_word_embeddings=False,
                      initializer_range=0.3)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture()
def tiny_model(tiny_tokenizer):
    return build_tiny_model(len(tiny_tokenizer))


@pytest.fixture(scope="session")
def qwen():
    """The embedded default model, Qwen2.5-Coder-0.5B-Instruct (fp32, CPU). Loaded once."""
    from experiential.models import ModelNotInstalledError, load_model

    torch.set_num_threads(os.cpu_count() or 2)
    try:
        return load_model("default", dtype="fp32", device="cpu")
    except ModelNotInstalledError as e:
        pytest.fail(str(e))


@contextmanager
def running(app: Any) -> Iterator[str]:
    """Run ``app`` with uvicorn on a free loopback port in a thread; yield its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert thread.is_alive() and time.time() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture()
def model_dir(tiny_model, tiny_tokenizer, tmp_path):
    """The tiny model and tokenizer saved as a local model directory (what the CLI loads)."""
    d = tmp_path / "tiny"
    tiny_model.save_pretrained(d)
    tiny_tokenizer.save_pretrained(d)
    return str(d)
