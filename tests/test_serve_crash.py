"""SIGKILL the server (a real subprocess) while it is learning, then restart it on the same state
directory: no acknowledged experience is lost, the half-written version is discarded, and the
previous adapter is what gets served."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

TESTS = Path(__file__).resolve().parent

# The server process: the tiny model (seeded, so every start has the same base weights). A
# control file in the state dir sets the steps of the next update and where it should hang
# (``train``: inside the optimisation loop; ``save``: after the adapter files are written to the
# temporary version directory, before it is published), so the kill lands where the test wants.
SERVER = r"""
import json, socket, sys, threading, time
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from conftest import build_tiny_model, build_tiny_tokenizer
import uvicorn
from experiential.config import ELConfig
from experiential.serve import create_app
from experiential.trainer import ExperientialTrainer

state = Path(sys.argv[1])
control = state / "control.json"

def factory(model, tok, cfg):
    c = json.loads(control.read_text())
    trainer = ExperientialTrainer(model, tok, cfg.replace(max_steps=c["steps"]))
    if c.get("hang") == "train":
        real_loss, n = trainer.objective.loss, [0]
        def loss(*a, **k):
            n[0] += 1
            if n[0] == 3:
                (state / "hanging").write_text("train")
                time.sleep(600)
            return real_loss(*a, **k)
        trainer.objective.loss = loss
    if c.get("hang") == "save":
        real_save = trainer.save
        def save(path):
            out = real_save(path)
            (state / "hanging").write_text(str(path))
            time.sleep(600)
            return out
        trainer.save = save
    return trainer

cfg = ELConfig(max_steps=3, batch_size=4, micro_batch_size=4, learning_rate=1e-2, progress=False,
               retention=False, anchor_weight=0.0, stop_kl=None, lora_r=4, lora_alpha=8)
tok = build_tiny_tokenizer()
app = create_app(build_tiny_model(len(tok)), tok, state_dir=state, config=cfg, learn_every=None,
                 api_keys=[], default_max_tokens=8, trainer_factory=factory)
sock = socket.socket()
sock.bind(("127.0.0.1", 0))
print("PORT", sock.getsockname()[1], flush=True)
uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
"""

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


def start(state: Path) -> tuple[subprocess.Popen, httpx.Client]:
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(state), str(TESTS)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = ""
        while not line.startswith("PORT "):  # (an import may print a blank line first)
            line = proc.stdout.readline()
            assert line, "server did not start"
        client = httpx.Client(base_url=f"http://127.0.0.1:{int(line.split()[1])}", timeout=60)
        deadline = time.time() + 60
        while True:
            try:
                if client.get("/health").status_code == 200:
                    return proc, client
            except httpx.TransportError:
                pass
            assert time.time() < deadline and proc.poll() is None, "server did not come up"
            time.sleep(0.05)
    except BaseException:
        kill(proc)
        raise


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None and time.time() < deadline, f"{path.name} never appeared"
        time.sleep(0.02)


def test_sigkill_during_learning_loses_nothing_and_keeps_the_previous_adapter(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    control = state / "control.json"
    control.write_text(json.dumps({"steps": 3}))

    proc, client = start(state)
    try:
        rid = client.post("/v1/chat/completions", json={"messages": PROMPT}).json()["id"]
        acked = [client.post("/v1/feedback", json={"response_id": rid, "feedback": f"fb {i}"}
                             ).json()["id"] for i in range(2)]
        assert client.post("/v1/learn", json={"wait": True}).json()["status"] == "activated"
        v1_answer = client.post("/v1/chat/completions", json={"messages": PROMPT}).json()
        assert v1_answer["adapter_version"] == "v1"

        # kill 1: in the middle of the optimisation steps of v2
        acked += [client.post("/v1/feedback", json={"response_id": rid, "feedback": "fb 2"}
                              ).json()["id"]]
        control.write_text(json.dumps({"steps": 50, "hang": "train"}))
        assert client.post("/v1/learn").json() == {"status": "started", "version": "v2"}
        wait_for(state / "hanging", proc)
        assert client.get("/v1/learn").json()["running"] == "v2"
    finally:
        kill(proc)
        client.close()
    (state / "hanging").unlink()

    proc, client = start(state)
    try:
        listing = client.get("/v1/adapters").json()
        assert listing["active"] == "v1" and [v["version"] for v in listing["data"]] == [
            "base", "v1"]
        again = client.post("/v1/chat/completions", json={"messages": PROMPT}).json()
        assert again["adapter_version"] == "v1"
        assert again["choices"][0]["message"] == v1_answer["choices"][0]["message"]
        assert client.get("/v1/learn").json()["pending"] == 1

        # kill 2: the adapter files of v2 are written, but not yet published
        acked += [client.post("/v1/feedback", json={"response_id": rid, "feedback": "fb 3"}
                              ).json()["id"]]
        control.write_text(json.dumps({"steps": 3, "hang": "save"}))
        assert client.post("/v1/learn").json()["version"] == "v2"
        wait_for(state / "hanging", proc)
        tmp_dir = Path((state / "hanging").read_text())
        assert (tmp_dir / "adapter_config.json").is_file()
    finally:
        kill(proc)
        client.close()

    proc, client = start(state)
    try:
        assert not tmp_dir.exists()  # the half-written version was discarded on start
        assert sorted(p.name for p in (state / "adapters").iterdir()) == ["v1"]
        listing = client.get("/v1/adapters", params={"include_ids": True}).json()
        assert listing["active"] == "v1"
        assert [v["version"] for v in listing["data"]] == ["base", "v1"]
        assert listing["data"][1]["experiences"] == acked[:2]
        assert client.get("/v1/learn").json()["pending"] == 2
        # the store has every acknowledged experience, once
        from experiential.store import ExperienceStore

        with ExperienceStore(state / "experiences.sqlite") as store:
            assert [e.id for e in store.list()] == acked
        # and learning resumes normally, under the next name, from everything stored
        control.write_text(json.dumps({"steps": 3}))
        r = client.post("/v1/learn", json={"wait": True}).json()
        assert r["status"] == "activated" and r["version"] == "v2"
        listing = client.get("/v1/adapters", params={"include_ids": True}).json()
        assert listing["active"] == "v2" and listing["data"][2]["experiences"] == acked
    finally:
        kill(proc)
        client.close()
    assert os.path.isdir(state / "adapters" / "v2")
