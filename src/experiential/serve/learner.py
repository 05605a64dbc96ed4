"""What the server remembers and how it learns: the response log, the adapter registry (versions,
the active model, hot swap, rollback), the swap gate and the background learner.

Layout of the state directory::

    state_dir/
      adapters/v1/            a standard PEFT adapter + learn_report.json + serve_manifest.json
      adapters/v2/
      adapters/.v3.tmp-<hex>/ a version being written (removed on restart if a kill left it)
      active.json             {"version": "v2"}: what to serve after a restart

A version directory appears only by an atomic rename of a complete directory, and ``active.json``
is replaced atomically, so a kill at any point leaves either the previous state or the new one.
Version ``vk`` is the base model plus an adapter trained (from the base) on every experience stored
when its learning started, so activating any version, or ``base``, is a plain switch.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import re
import shutil
import sqlite3
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..config import ELConfig
from ..experience import Experience, Message
from ..store import ExperienceStore
from .engine import Tokenizer, completion_logprobs

log = logging.getLogger("experiential.serve")

BASE = "base"
_VERSION_RE = re.compile(r"^v(\d+)$")
MANIFEST = "serve_manifest.json"


# -- the response log ---------------------------------------------------------------------------
class ResponseLog:
    """``responses`` table (in the experience store's SQLite file, through a connection of its
    own): response id -> the prompt messages and the answer given, so feedback can refer to it."""

    def __init__(self, path: str | Path):
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), timeout=30.0, check_same_thread=False,
                                   isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS responses (id TEXT PRIMARY KEY, messages TEXT NOT NULL, "
            "answer TEXT NOT NULL, adapter_version TEXT, finish_reason TEXT, "
            "created REAL NOT NULL)")

    def record(self, response_id: str, messages: list[Message], answer: str,
               adapter_version: str, finish_reason: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO responses (id, messages, answer, adapter_version, finish_reason, "
                "created) VALUES (?, ?, ?, ?, ?, ?)",
                (response_id, json.dumps(messages, ensure_ascii=False), answer, adapter_version,
                 finish_reason, time.time()))

    def get(self, response_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT messages, answer, adapter_version, finish_reason, created FROM responses "
                "WHERE id = ?", (response_id,)).fetchone()
        if row is None:
            return None
        return {"id": response_id, "messages": json.loads(row[0]), "answer": row[1],
                "adapter_version": row[2], "finish_reason": row[3], "created": row[4]}

    def close(self) -> None:
        with self._lock:
            self._db.close()


# -- the gate -----------------------------------------------------------------------------------
class Gate:
    """Refuse a swap when the candidate regresses on a held-out check set.

    The score is the mean per-token log-probability of each item's ``expected`` answer given its
    ``prompt``, averaged over items. The candidate passes when
    ``score(candidate) >= score(current) - margin`` (a negative margin demands an improvement).
    """

    def __init__(self, items: Sequence[dict[str, Any]], margin: float = 0.05):
        if not items:
            raise ValueError("the gate's check set is empty")
        self.items: list[tuple[list[Message], str]] = []
        for i, item in enumerate(items, start=1):
            self.items.append(_check_item(item, f"check item {i}"))
        self.margin = float(margin)

    @classmethod
    def from_jsonl(cls, path: str | Path, margin: float = 0.05) -> "Gate":
        items = []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    items.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}, line {lineno}: invalid JSON: {e.msg}") from None
                _check_item(items[-1], f"{path}, line {lineno}")
        return cls(items, margin)

    def score(self, model: Any, tok: Tokenizer) -> float:
        scores = completion_logprobs(model, tok, self.items)
        return sum(s / n for s, n in scores) / len(scores)

    def check(self, candidate: Any, current: Any, tok: Tokenizer, *,
              current_version: str) -> dict[str, Any]:
        cand, cur = self.score(candidate, tok), self.score(current, tok)
        passed = cand >= cur - self.margin
        return {"passed": passed, "candidate": cand, "current": cur, "against": current_version,
                "margin": self.margin, "n_items": len(self.items),
                "reason": None if passed else (
                    f"regressed on the check set: mean log-prob {cand:.4f} vs {cur:.4f} for "
                    f"{current_version} (allowed margin {self.margin})")}


def _check_item(item: Any, where: str) -> tuple[list[Message], str]:
    if not isinstance(item, dict) or "prompt" not in item or "expected" not in item:
        raise ValueError(f"{where}: expected an object with 'prompt' and 'expected'")
    prompt, expected = item["prompt"], item["expected"]
    if not isinstance(expected, str) or not expected:
        raise ValueError(f"{where}: 'expected' must be a non-empty string")
    try:
        messages = Experience(prompt=prompt, attempt="", feedback="-").messages
    except ValueError as e:
        raise ValueError(f"{where}: bad prompt: {e}") from None
    return messages, expected


# -- the registry -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Served:
    """What a request runs on: a version name and its model. Immutable: a swap replaces it."""

    version: str
    model: Any


class UnknownVersion(KeyError):
    pass


class AdapterRegistry:
    """Versions on disk and in the store, and the model being served.

    ``current()`` is a lock-protected read of one reference; a request keeps the snapshot it got
    for its whole life, so requests in flight finish on the model they started with while new
    requests get the new one. Only the reference swap happens under the lock.
    """

    def __init__(self, base_model: Any, store: ExperienceStore, state_dir: str | Path):
        self.base = base_model
        self.store = store
        self.state_dir = Path(state_dir)
        self.adapters_dir = self.state_dir / "adapters"
        self.adapters_dir.mkdir(parents=True, exist_ok=True)
        self._swap_lock = threading.Lock()
        self._activate_lock = threading.RLock()  # one switch (load + swap + record) at a time
        self._served = Served(BASE, base_model)
        self._recover()
        active = self._read_active()
        if active != BASE:
            try:
                self.activate(active, force=True)
            except Exception as e:  # a broken or missing version must not stop the server
                log.error("could not load the active adapter %s (%s); serving the base model",
                          active, e)

    # -- state on disk -------------------------------------------------------------------------
    def _recover(self) -> None:
        """Remove half-written versions; register complete ones a kill left unrecorded."""
        for p in self.adapters_dir.iterdir():
            if p.name.startswith(".") and ".tmp-" in p.name:
                log.warning("removing incomplete adapter version %s (learning was interrupted)",
                            p.name)
                shutil.rmtree(p, ignore_errors=True)
        known = {a["version"]: a for a in self.store.adapters()}
        for p in sorted(self.adapters_dir.iterdir()):
            if not _VERSION_RE.match(p.name) or not (p / MANIFEST).is_file():
                continue
            manifest = json.loads((p / MANIFEST).read_text())
            if p.name not in known:
                self.store.add_adapter(p.name, str(p), metrics=manifest.get("metrics", {}))
            if len(known.get(p.name, {}).get("experiences", [])) < len(manifest["experiences"]):
                try:
                    self.store.mark_consumed(manifest["experiences"], p.name)
                except KeyError as e:
                    log.warning("version %s: %s", p.name, e)

    def _read_active(self) -> str:
        try:
            return json.loads((self.state_dir / "active.json").read_text())["version"]
        except FileNotFoundError:
            return BASE
        except (ValueError, KeyError) as e:
            log.error("unreadable active.json (%s); serving the base model", e)
            return BASE

    def _write_active(self, version: str) -> None:
        tmp = self.state_dir / f".active.json.tmp-{uuid.uuid4().hex}"
        with open(tmp, "w") as f:
            json.dump({"version": version, "at": time.time()}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.state_dir / "active.json")
        _fsync_dir(self.state_dir)

    def next_version(self) -> str:
        nums = [int(m.group(1)) for name in
                [a["version"] for a in self.store.adapters()] +
                [p.name for p in self.adapters_dir.iterdir()]
                if (m := _VERSION_RE.match(name))]
        return f"v{max(nums, default=0) + 1}"

    def new_version_dir(self, version: str) -> Path:
        return self.adapters_dir / f".{version}.tmp-{uuid.uuid4().hex[:8]}"

    def commit_version_dir(self, tmp: Path, version: str, experience_ids: list[str],
                           metrics: dict[str, Any]) -> Path:
        """Write the manifest, then publish the directory by one atomic rename."""
        final = self.adapters_dir / version
        report = tmp / "learn_report.json"
        if report.is_file():
            data = json.loads(report.read_text())
            data["adapter_path"] = str(final)
            report.write_text(json.dumps(_clean(data), indent=2))
        (tmp / MANIFEST).write_text(json.dumps(
            {"version": version, "experiences": experience_ids, "metrics": metrics,
             "created": time.time()}, indent=1))
        for f in tmp.iterdir():
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        _fsync_dir(tmp)
        os.replace(tmp, final)
        _fsync_dir(self.adapters_dir)
        return final

    # -- serving -------------------------------------------------------------------------------
    def current(self) -> Served:
        with self._swap_lock:
            return self._served

    def install(self, version: str, model: Any) -> None:
        """Make ``model`` (already loaded) the one new requests get, and remember it."""
        with self._activate_lock:  # the file and the reference change together
            with self._swap_lock:
                self._served = Served(version, model)
            self._write_active(version)
        log.info("now serving %s", version)

    def record(self, version: str) -> dict[str, Any] | None:
        for a in self.store.adapters():
            if a["version"] == version:
                return a
        return None

    def activate(self, version: str, *, force: bool = False) -> Served:
        """Serve ``version`` (or ``base``). A version its gate refused needs ``force``."""
        with self._activate_lock:
            if version == BASE:
                self.install(BASE, self.base)
                return self.current()
            if self.current().version == version:
                return self.current()
            rec = self.record(version)
            if rec is None or not rec.get("path"):
                raise UnknownVersion(version)
            gate = (rec.get("metrics") or {}).get("gate") or {}
            if gate.get("passed") is False and not force:
                raise PermissionError(
                    f"version {version} was refused by the gate ({gate.get('reason')}); "
                    "activate it with force=true to serve it anyway")
            model = self.load(rec["path"])
            self.install(version, model)
            return self.current()

    def load(self, path: str | Path) -> Any:
        """The base model plus the adapter in ``path`` (a copy: the base stays pristine), or a
        fully fine-tuned model saved there."""
        path = Path(path)
        if (path / "adapter_config.json").is_file():
            from peft import PeftModel

            model = PeftModel.from_pretrained(copy.deepcopy(self.base), str(path))
        elif (path / "config.json").is_file():
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=self.base.dtype)
            model.to(next(self.base.parameters()).device)
        else:
            raise UnknownVersion(f"{path} holds no adapter or model")
        return _freeze(model)

    def listing(self) -> list[dict[str, Any]]:
        active = self.current().version
        out = [{"version": BASE, "active": active == BASE, "path": None, "created": None,
                "n_experiences": 0, "metrics": {}}]
        for a in self.store.adapters():
            out.append({"version": a["version"], "active": a["version"] == active,
                        "path": a["path"], "created": a["created"],
                        "n_experiences": len(a["experiences"]),
                        "experiences": a["experiences"], "metrics": _clean(a["metrics"])})
        return out


# -- the learner --------------------------------------------------------------------------------
TrainerFactory = Callable[[Any, Any, ELConfig], Any]


class Learner:
    """Runs EL updates in a background thread, one at a time.

    A job snapshots every stored experience (cumulative), trains a LoRA adapter on a deep copy of
    the base model, optionally gates it, publishes it as the next version directory, records it in
    the store (metrics, and which experiences it consumed) and hot-swaps it in. Serving never waits
    for learning: the only shared step is the reference swap.

    An experience whose feedback carried a corrected answer also contributes a second training
    item whose response is the corrected answer (the user-written revision, as in
    ``revise_then_distill``): the student then learns the teacher's distribution over the better
    answer's tokens, not only over the answer it gave.
    """

    def __init__(self, *, base_model: Any, tokenizer: Any, store: ExperienceStore,
                 registry: AdapterRegistry, responses: ResponseLog, config: ELConfig,
                 learn_every: int | None = 8, gate: Gate | None = None,
                 trainer_factory: TrainerFactory | None = None, auto_activate: bool = True,
                 distill_corrections: bool = True, serving_tok: Tokenizer | None = None):
        self.base = base_model
        self.tok = copy.deepcopy(tokenizer)  # the learner thread's own: no sharing with requests
        self.serving_tok = serving_tok or Tokenizer(tokenizer)
        self.store, self.registry, self.responses = store, registry, responses
        self.cfg = config
        self.learn_every = learn_every if learn_every and learn_every > 0 else None
        self.gate = gate
        self.trainer_factory = trainer_factory
        self.auto_activate = auto_activate
        self.distill_corrections = distill_corrections
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._running: str | None = None
        self._jobs: dict[str, dict[str, Any]] = {}
        self._done: dict[str, threading.Event] = {}
        self._anchor_cache: list[Any] | None = None
        self._probe_cache: list[Any] | None = None
        self._closed = False

    # -- triggering ----------------------------------------------------------------------------
    def pending(self) -> int:
        return self.store.count(only_unconsumed=True)

    def notify(self) -> dict[str, Any] | None:
        """Called after an experience is stored: start a job when enough are waiting."""
        if self.learn_every is None or self._running is not None:
            return None
        if self.pending() >= self.learn_every:
            return self.trigger(reason=f"{self.learn_every} new experiences")
        return None

    def trigger(self, *, reason: str = "requested", force: bool = False) -> dict[str, Any]:
        """Start a job unless one is running. Without ``force`` a job needs new experiences."""
        with self._lock:
            if self._closed:
                return {"status": "closed"}
            if self._running is not None:
                return {"status": "running", "version": self._running}
            pending = self.pending()
            if pending == 0:
                if len(self.store) == 0:
                    return {"status": "no_experiences"}
                if not force:
                    return {"status": "nothing_new"}
            version = self.registry.next_version()
            self._running = version
            self._done[version] = threading.Event()
            self._jobs[version] = {"version": version, "status": "running", "reason": reason,
                                   "started": time.time(), "new_experiences": pending}
            self._thread = threading.Thread(target=self._run, args=(version,), daemon=True,
                                            name=f"experiential-learner-{version}")
            self._thread.start()
            return {"status": "started", "version": version}

    def wait(self, version: str, timeout: float | None = None) -> dict[str, Any]:
        ev = self._done.get(version)
        if ev is None:
            raise UnknownVersion(version)
        ev.wait(timeout)
        return self.job(version)

    def job(self, version: str) -> dict[str, Any]:
        with self._lock:
            return dict(self._jobs[version])

    def status(self) -> dict[str, Any]:
        with self._lock:
            jobs = [dict(j) for j in self._jobs.values()]
        return {"running": self._running, "pending": self.pending(),
                "learn_every": self.learn_every, "jobs": _clean(jobs)}

    def close(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    # -- the job -------------------------------------------------------------------------------
    def _run(self, version: str) -> None:
        outcome: dict[str, Any]
        try:
            outcome = self._learn(version)
        except Exception as e:  # the job fails; stored experiences and the served model stay
            log.error("learning %s failed: %s\n%s", version, e, traceback.format_exc())
            outcome = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        with self._lock:
            self._jobs[version].update(outcome, finished=time.time())
            self._running = None
        self._done[version].set()
        if outcome["status"] != "failed" and not self._closed:
            self.notify()  # experiences that arrived during the job may already be enough

    def _learn(self, version: str) -> dict[str, Any]:
        experiences = self.store.list()
        ids = [e.id for e in experiences]
        train, skipped = self._training_set(experiences)
        if not train:
            raise ValueError("none of the stored experiences can be learned from: "
                             + "; ".join(f"{i}: {why}" for i, why in skipped[:5]))
        model = copy.deepcopy(self.base)
        trainer = self._make_trainer(model)
        result = trainer.learn(train)
        candidate = _freeze(trainer.model)
        metrics = summarize_result(result)
        metrics.update(n_experiences=len(ids), n_training_items=len(train),
                       skipped=[{"id": i, "reason": why} for i, why in skipped])
        current = self.registry.current()
        if self.gate is not None:
            metrics["gate"] = self.gate.check(candidate, current.model, self.serving_tok,
                                              current_version=current.version)
        passed = (metrics.get("gate") or {}).get("passed", True)
        metrics["status"] = "ok" if passed else "refused"
        metrics = _clean(metrics)
        tmp = self.registry.new_version_dir(version)
        try:
            trainer.save(tmp)
            final = self.registry.commit_version_dir(tmp, version, ids, metrics)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.store.add_adapter(version, str(final), metrics=metrics)
        self.store.mark_consumed(ids, version)
        if not passed:
            log.warning("version %s not activated: %s", version, metrics["gate"]["reason"])
            status = "refused"
        elif self.auto_activate:
            self.registry.install(version, candidate)
            status = "activated"
        else:
            status = "stored"
        return {"status": status, "metrics": metrics, "path": str(final)}

    def _make_trainer(self, model: Any) -> Any:
        if self.trainer_factory is not None:
            return self.trainer_factory(model, self.tok, self.cfg)
        from ..trainer import ExperientialTrainer

        trainer = ExperientialTrainer(model, self.tok, self.cfg, anchor_pairs=self._anchor_cache,
                                      probes=self._probe_cache)
        # Anchors are the base model's own answers and probes a fixed set: build them once.
        self._anchor_cache = trainer.anchor_pairs()
        self._probe_cache = trainer.probes()
        return trainer

    def _training_set(self, experiences: list[Experience]
                      ) -> tuple[list[Experience], list[tuple[str, str]]]:
        """The experiences to train on, plus ``(id, reason)`` for the ones that cannot be."""
        from ..context import teacher_messages
        from ..tokens import context_ids, response_ids

        train: list[Experience] = []
        skipped: list[tuple[str, str]] = []
        for e in experiences:
            items = []
            if self.cfg.response != "attempt" or e.attempt.strip():
                items.append(e)
            corrected = e.metadata.get("corrected_answer")
            if self.distill_corrections and isinstance(corrected, str) and corrected.strip():
                items.append(Experience(prompt=e.prompt, attempt=corrected, feedback=e.feedback,
                                        metadata={"derived_from": e.id}, id=f"{e.id}#corrected"))
            if not items:
                skipped.append((e.id, "empty answer and no corrected answer"))
                continue
            for item in items:
                t_ctx = context_ids(self.tok, teacher_messages(
                    item, self.cfg.context_design, self.cfg.context_template))
                s_ctx = context_ids(self.tok, item.messages)
                resp = self.cfg.max_new_tokens if self.cfg.response == "samples" else \
                    len(response_ids(self.tok, item.attempt))
                n = max(len(t_ctx), len(s_ctx)) + resp
                if n > self.cfg.max_length:
                    skipped.append((item.id, f"{n} tokens, over max_length={self.cfg.max_length}"))
                else:
                    train.append(item)
        return train, skipped


# -- helpers ------------------------------------------------------------------------------------
def summarize_result(result: Any) -> dict[str, Any]:
    """The numbers worth keeping with a version (from ``LearnResult.to_dict()``)."""
    d = result.to_dict()
    keys = ("steps", "stopped_early", "n_pairs", "gap_before", "gap_after", "retention",
            "seconds", "student_tokens", "declined")
    out = {k: d.get(k) for k in keys}
    out["final_loss"] = d["losses"][-1] if d.get("losses") else None
    return out


def _freeze(model: Any) -> Any:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN and infinities become None (strict JSON has no such numbers)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
