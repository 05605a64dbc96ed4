import json
import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from experiential.experience import Experience, load_jsonl
from experiential.store import ExperienceStore


def exp(i):
    return Experience(f"question {i}", f"attempt {i}", f"feedback {i}", {"i": i}, id=f"id{i}")


def test_append_list_consume_export(tmp_path):
    with ExperienceStore(tmp_path / "s.db") as s:
        for i in range(5):
            s.append(exp(i))
        assert len(s) == 5
        assert s.get("id3").to_dict() == exp(3).to_dict()
        s.mark_consumed(["id0", "id1"], "v1")
        assert [e.id for e in s.list(only_unconsumed=True)] == ["id2", "id3", "id4"]
        assert s.count(only_unconsumed=True) == 3 and s.count() == 5
        assert [e.id for e in s.list(unconsumed_by="v2")] == [f"id{i}" for i in range(5)]
        assert s.consumed_by("v1") == ["id0", "id1"] and s.versions_of("id1") == ["v1"]
        s.add_adapter("v1", "/tmp/v1", metrics={"gap": 0.5})
        assert s.adapters()[0]["experiences"] == ["id0", "id1"]
        with pytest.raises(KeyError):
            s.mark_consumed(["nope"], "v1")
        with pytest.raises(ValueError, match="already stored"):
            s.append(exp(0))
        assert len(s) == 5
        s.export_jsonl(tmp_path / "out.jsonl")
    back, _ = load_jsonl(tmp_path / "out.jsonl")
    assert [e.to_dict() for e in back] == [exp(i).to_dict() for i in range(5)]


def test_batch_with_duplicate_is_all_or_nothing(tmp_path):
    s = ExperienceStore(tmp_path / "s.db")
    s.append(exp(1))
    with pytest.raises(ValueError):
        s.extend([exp(2), exp(1)])
    assert [e.id for e in s.list()] == ["id1"]


def test_concurrent_threads_store_each_once(tmp_path):
    s = ExperienceStore(tmp_path / "s.db")
    threads = [threading.Thread(target=lambda k=k: [s.append(exp(k * 50 + i)) for i in range(50)])
               for k in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    ids = [e.id for e in s.list()]
    assert len(ids) == 400 and len(set(ids)) == 400


def test_kill_mid_write_loses_nothing_committed(tmp_path):
    """A writer process is SIGKILLed while appending; every append it reported is there and the
    database is intact."""
    db = tmp_path / "s.db"
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.abspath('src')!r})
        from experiential.store import ExperienceStore
        from experiential.experience import Experience
        s = ExperienceStore({str(db)!r})
        i = 0
        while True:
            s.append(Experience("q" * 2000, "a", "f", id=f"k{{i}}"))
            print(i, flush=True)
            i += 1
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    acked = -1
    for line in p.stdout:
        acked = int(line)
        if acked >= 150:
            break
    p.send_signal(signal.SIGKILL)
    p.wait()
    s = ExperienceStore(db)
    ids = {e.id for e in s.list()}
    assert all(f"k{i}" in ids for i in range(acked + 1))
    assert s._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    s.append(exp(1))  # still writable
