"""Read Gemma Scope and SAELens checkpoints, write SAELens folders, and tell the formats apart.

Gemma Scope (Gemma 2): ``params.npz`` with ``W_enc [d_model, d_sae]``, ``W_dec [d_sae, d_model]``,
``b_enc``, ``b_dec``, ``threshold``; no config file; ``pre = x @ W_enc + b_enc`` with no pre-encoder
bias, ``f = relu(pre) · (pre > threshold)``, ``x̂ = f @ W_dec + b_dec``; input normalisation
already folded in. The hookpoint comes from the path (``layer_L/width_W/average_l0_N``) and the
repository's site suffix (``-res``, ``-mlp``, ``-att``).

SAELens v6: ``cfg.json`` + ``sae_weights.safetensors``; architectures ``standard`` (ReLU),
``jumprelu``, ``topk``, ``gated``, ``batchtopk`` and ``matryoshka_batchtopk`` (which SAELens itself
saves as ``jumprelu`` with the global threshold broadcast); ``apply_b_dec_to_input`` subtracts
``b_dec`` before encoding. SAELens's TopK family trains with ``rescale_acts_by_decoder_norm``
(pre-activations times each decoder row's norm, activations divided by it before decoding); loading
folds that in exactly: W_enc and b_enc times the norms, W_dec rows divided by them. Hook names are
TransformerLens's (``blocks.8.hook_resid_pre``) and map onto saescope's sites both ways; an export
writes ``metadata.sae_lens_version`` so SAELens reads it as a v6 config and keeps the hook and model.
AbsTopK (signed activations) has no saescope equivalent and is refused by name. Transcoders (one
site in, another out) read and write through ``saescope.io.interop.transcoders``, as do circuit-tracer
transcoder sets and Gemma Scope 2 files, which ``detect_format`` recognises too.

Both map onto saescope's own classes with identical tensors, so ``encode``/``decode`` give the
published formulas exactly (tested against an independent numpy implementation).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saescope.errors import InvalidInput, MissingFile
from saescope.io.atomic import atomic_write, atomic_write_json, read_json
from saescope.io.checkpoint import load_checked_tensors
from saescope.lm.hookpoints import canonical_name, transformer_lens_name
from saescope.saes import ARCHITECTURES, SparseAutoencoder, create_sae, get_architecture
from saescope.saes.stacked import stacked_hookpoints

GEMMA_SCOPE_SITES = {"res": "resid_post", "mlp": "mlp_out", "att": "attn_z"}
SAELENS_TO_SAESCOPE = {"standard": "relu", "relu": "relu", "jumprelu": "jumprelu", "topk": "topk", "gated": "gated", "batchtopk": "batchtopk",
                       "matryoshka_batchtopk": "matryoshka"}
SAELENS_FORMAT_VERSION = "6.0.0"
"""The SAELens config format an export follows (v6: architecture fields at the top, the rest under metadata)."""
_UNSUPPORTED_SAELENS = {
    "abstopk": "AbsTopK keeps the k largest |pre-activations| with their sign; saescope's architectures are non-negative",
}
_GEMMA_PATH = re.compile(r"layer_(\d+)/width_(\w+)/average_l0_(\d+)")


def detect_format(path: str | Path) -> str:
    """"saescope", "saelens", "gemma_scope", "gemma_scope_2" or "circuit_tracer" for a local file or folder; ValueError otherwise."""
    from saescope.io.interop.transcoders import is_circuit_tracer, is_gemma_scope_2

    target = Path(path)
    if target.is_file() and target.suffix == ".npz" or (target.is_dir() and (target / "params.npz").is_file()):
        return "gemma_scope"
    if is_circuit_tracer(target):
        return "circuit_tracer"
    if is_gemma_scope_2(target) or (target.is_dir() and is_gemma_scope_2(target / "params.safetensors")):
        return "gemma_scope_2"
    if target.is_dir() and (target / "cfg.json").is_file():
        cfg = read_json(target / "cfg.json")
        if not isinstance(cfg, dict):
            raise InvalidInput(f"{target / 'cfg.json'}: expected a JSON object")
        if "saescope_version" in cfg:
            return "saescope"
        if "architecture" in cfg or "hook_name" in cfg or "hook_point" in cfg or "metadata" in cfg:
            return "saelens"
        raise InvalidInput(f"{target / 'cfg.json'}: neither a saescope nor a SAELens config (no architecture)")
    if not target.exists():
        raise MissingFile(f"{path}: no such file or folder")
    raise InvalidInput(f"{path}: not an SAE (expected a folder with cfg.json + sae_weights.safetensors, a Gemma Scope params.npz or "
                       "params.safetensors, or a circuit-tracer transcoder set with config.yaml + layer_L.safetensors)")


# -- Gemma Scope -----------------------------------------------------------------------------------------
def load_gemma_scope(path: str | Path, hookpoint: str | None = None, model_id: str | None = None) -> SparseAutoencoder:
    file = Path(path)
    if file.is_dir():
        file = file / "params.npz"
    try:
        with np.load(file) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as error:
        raise InvalidInput(f"{file}: cannot read a Gemma Scope params.npz ({error})") from None
    required = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
    missing = [name for name in required if name not in arrays]
    if missing:
        raise InvalidInput(f"{file}: missing {missing}; a Gemma Scope params.npz holds {list(required)}")
    d_in, d_sae = arrays["W_enc"].shape
    expected = {"W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,), "threshold": (d_sae,)}
    for name, shape in expected.items():
        if arrays[name].shape != shape:
            raise InvalidInput(f"{file}: {name} has shape {list(arrays[name].shape)}, but W_enc {list(arrays['W_enc'].shape)} implies {list(shape)}")
    hookpoint = hookpoint or gemma_scope_hookpoint(str(path))
    sae = create_sae("jumprelu", int(d_in), int(d_sae), hookpoint=hookpoint, model_id=model_id)
    load_checked_tensors(sae, {name: torch.from_numpy(np.asarray(arrays[name], dtype=np.float32)) for name in required}, file, "W_enc")
    sae.eval()
    sae.normalization = {"method": "none", "folded": True, "note": "Gemma Scope: normalisation folded into the weights"}
    sae.training_summary = {"source": "gemma_scope", "path": str(path)}
    return sae


def gemma_scope_hookpoint(path: str) -> str | None:
    """``layers.L.<site>`` from a Gemma Scope path such as ``gemma-scope-2b-pt-res/layer_20/width_16k/...``."""
    match = _GEMMA_PATH.search(path.replace("\\", "/"))
    if not match:
        return None
    site = next((GEMMA_SCOPE_SITES[s] for s in GEMMA_SCOPE_SITES if re.search(rf"-{s}(\b|/|-|$)", path)), "resid_post")
    return f"layers.{int(match.group(1))}.{site}"


# -- SAELens -------------------------------------------------------------------------------------------
def load_saelens(path: str | Path) -> SparseAutoencoder:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(path)
    cfg_file, weights_file = folder / "cfg.json", folder / "sae_weights.safetensors"
    if not weights_file.is_file():
        raise MissingFile(f"{weights_file}: missing; a SAELens folder holds cfg.json and sae_weights.safetensors")
    from saescope.io.interop.transcoders import SAELENS_TRANSCODERS, load_saelens_transcoder

    cfg = _saelens_cfg(cfg_file)
    arch = cfg["architecture"]
    supported = sorted([*SAELENS_TO_SAESCOPE, *SAELENS_TRANSCODERS.values()])
    if arch in _UNSUPPORTED_SAELENS:
        raise InvalidInput(f"{cfg_file}: SAELens architecture {arch!r} cannot be loaded: {_UNSUPPORTED_SAELENS[arch]}; supported: {supported}")
    if arch not in SAELENS_TO_SAESCOPE and arch not in SAELENS_TRANSCODERS.values():
        raise InvalidInput(f"{cfg_file}: SAELens architecture {arch!r} is not supported; supported: {supported}")
    norm = cfg.get("normalize_activations", "none")
    if norm not in (None, "none", False):
        raise InvalidInput(f"{cfg_file}: normalize_activations={norm!r} needs a dataset-dependent scale that is not in the folder; "
                         "fold it into the weights with SAELens (fold_activation_norm_scaling_factor) and save again")
    try:
        tensors = load_file(str(weights_file))
    except (SafetensorError, OSError, ValueError) as error:
        raise InvalidInput(f"{weights_file}: cannot read weights ({error})") from None
    if arch in SAELENS_TRANSCODERS.values():
        sae = load_saelens_transcoder(cfg, tensors, weights_file)
        sae.normalization = {"method": "none", "folded": True, "note": f"loaded from SAELens ({arch})"}
        sae.training_summary = {"source": "saelens", "path": str(path), "architecture": arch}
        return sae
    d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
    metadata = cfg.get("metadata") or {}
    hook_name = metadata.get("saescope_hookpoint") or metadata.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
    model_id = metadata.get("model_name") or cfg.get("model_name")
    options: dict[str, Any] = {"hookpoint": canonical_name(hook_name) if hook_name else None, "model_id": model_id}
    ours = SAELENS_TO_SAESCOPE[arch]
    if "k" in get_architecture(ours).config_class.field_names():
        k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
        if k is None:
            raise InvalidInput(f"{cfg_file}: a {arch} config needs k")
        options["k"] = int(round(float(k)))
    details = metadata.get("training_architecture_details") or {}
    if ours == "jumprelu" and metadata.get("training_architecture") == "matryoshka_batchtopk" and "threshold" in tensors \
            and bool((tensors["threshold"] == tensors["threshold"].reshape(-1)[0]).all()):
        # SAELens saves a trained Matryoshka BatchTopK for inference as a JumpReLU with its global threshold
        ours = "matryoshka"
        cfg = {**cfg, "matryoshka_widths": details.get("matryoshka_widths")}
        options["k"] = int(round(float(details.get("k") or 1)))
    if ours == "matryoshka":
        widths = [int(w) for w in cfg.get("matryoshka_widths") or []]
        options["prefixes"] = widths if widths and widths[-1] == d_sae else [*widths, d_sae]
    if ours in ("batchtopk", "matryoshka") and "topk_threshold" in tensors and "threshold" not in tensors:
        tensors["threshold"] = tensors.pop("topk_threshold").float().reshape(-1).expand(d_sae).clone()
    if cfg.get("rescale_acts_by_decoder_norm"):
        tensors = _fold_decoder_norms(tensors, weights_file)
    sae = create_sae(ours, d_in, d_sae, **options)
    sae.apply_b_dec_to_input = bool(cfg.get("apply_b_dec_to_input", True))
    load_checked_tensors(sae, tensors, weights_file, "cfg.json")
    sae.eval()
    sae.normalization = {"method": "none", "folded": True, "note": f"loaded from SAELens ({arch})"}
    sae.training_summary = {"source": "saelens", "path": str(path), "architecture": arch}
    return sae


def _fold_decoder_norms(tensors: dict[str, torch.Tensor], weights_file: Path) -> dict[str, torch.Tensor]:
    """SAELens's rescale_acts_by_decoder_norm folded in: the same activations and reconstructions with unit decoder rows.

    SAELens computes pre = (x @ W_enc + b_enc) * n and x̂ = (f / n) @ W_dec + b_dec with n the decoder
    row norms; W_enc·n, b_enc·n and W_dec/n give pre and x̂ with no rescaling at all.
    """
    if any(name not in tensors for name in ("W_enc", "b_enc", "W_dec")):
        raise InvalidInput(f"{weights_file}: rescale_acts_by_decoder_norm needs W_enc, b_enc and W_dec")
    norms = tensors["W_dec"].float().norm(dim=1)
    if not bool((norms > 0).all()):
        raise InvalidInput(f"{weights_file}: a decoder row has norm 0, so rescale_acts_by_decoder_norm cannot be folded in")
    folded = dict(tensors)
    folded["W_enc"] = tensors["W_enc"].float() * norms
    folded["b_enc"] = tensors["b_enc"].float() * norms
    folded["W_dec"] = tensors["W_dec"].float() / norms[:, None]
    return folded


def _saelens_cfg(cfg_file: Path) -> dict[str, Any]:
    if not cfg_file.is_file():
        raise MissingFile(f"{cfg_file}: missing")
    cfg = read_json(cfg_file)
    if not isinstance(cfg, dict) or "d_in" not in cfg or "d_sae" not in cfg:
        raise InvalidInput(f"{cfg_file}: a SAELens config needs d_in and d_sae")
    if "architecture" not in cfg:  # pre-6.0 configs name the activation instead
        activation = cfg.get("activation_fn_str") or cfg.get("activation_fn") or "relu"
        cfg["architecture"] = "topk" if activation == "topk" else "standard"
    if isinstance(cfg.get("normalize_activations"), bool):
        cfg["normalize_activations"] = "none" if not cfg["normalize_activations"] else "expected_average_only_in"
    return cfg


def export_saelens(sae: SparseAutoencoder, path: str | Path) -> Path:
    """Write ``sae`` as a SAELens v6 folder (cfg.json + sae_weights.safetensors) that SAELens loads as is."""
    from safetensors.torch import save_file

    from saescope._version import __version__

    from saescope.io.interop.transcoders import saelens_transcoder_fields

    if sae.saelens_architecture is None and not sae.cfg.is_transcoder:
        exportable = sorted(name for name, cls in ARCHITECTURES.items() if cls.saelens_architecture)
        raise InvalidInput(f"{sae.architecture} SAEs have no SAELens equivalent; exportable: {exportable}")
    if stacked_hookpoints(sae):
        raise InvalidInput(f"a multi-layer SAE (over {len(stacked_hookpoints(sae))} hookpoints) has no SAELens equivalent; export one layer: "
                           "`saescope convert SAE --hookpoint layers.N.resid_post --to saelens` (saescope.saes.stacked.at_hookpoint)")
    if getattr(sae.cfg, "input_transform", None):
        raise InvalidInput(f"this SAE applies {sae.cfg.input_transform} to its input, which SAELens cannot represent; "
                           "use it in saescope, or train without --log1p to export")
    if sae.normalization and not sae.normalization.get("folded", True):
        raise InvalidInput("this SAE still expects normalised inputs; fold the input scale first (trained SAEs are folded when saved)")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().float().contiguous().cpu() for name, t in sae.export_tensors().items()}
    hookpoint = sae.cfg.hookpoint
    cfg: dict[str, Any] = {
        "architecture": sae.saelens_architecture,
        "d_in": sae.d_in, "d_sae": sae.d_sae, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": bool(sae.apply_b_dec_to_input),
        "normalize_activations": "none",
        # TransformerLens hands hook_z over as [..., n_heads, d_head]; SAELens flattens it for such SAEs
        "reshape_activations": "hook_z" if hookpoint and hookpoint.endswith(".attn_z") else "none",
        "metadata": {
            "sae_lens_version": SAELENS_FORMAT_VERSION,
            "sae_lens_training_version": None,
            "model_name": sae.cfg.model_id,
            "hook_name": (transformer_lens_name(hookpoint) or hookpoint) if hookpoint else None,
            "hook_head_index": None,
            "prepend_bos": True,
            "saescope_hookpoint": hookpoint,
            "exported_by": f"saescope {__version__}",
        },
    }
    if sae.saelens_architecture == "topk" and not sae.cfg.is_transcoder:
        cfg["k"] = int(sae.cfg.k)
        cfg["rescale_acts_by_decoder_norm"] = False
    if sae.cfg.is_transcoder:
        fields, tensors = saelens_transcoder_fields(sae)
        cfg["metadata"]["hook_name_out"] = fields.pop("hook_name_out")
        cfg["metadata"]["saescope_target"] = sae.cfg.target
        cfg.update(fields)
        if "threshold" in tensors and not fields["architecture"].startswith("jumprelu"):
            tensors.pop("threshold")
    atomic_write(folder / "sae_weights.safetensors", lambda path: save_file(tensors, str(path)))
    atomic_write_json(folder / "cfg.json", cfg, indent=2)
    return folder
