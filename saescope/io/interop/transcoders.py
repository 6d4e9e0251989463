"""Transcoders in the formats the circuit tools read: circuit-tracer, SAELens and Gemma Scope 2.

circuit-tracer (per-layer transcoder set): a folder with ``config.yaml`` (``model_kind: transcoder_set``,
``model_name``, ``feature_input_hook``, ``feature_output_hook``, ``activation`` and ``k`` for TopK)
and one ``layer_{L}.safetensors`` per layer, L = 0..N-1 with none missing: ``W_enc [d_sae, d_model]``
(``F.linear`` orientation, the transpose of saescope's), ``W_dec [d_sae, d_model]``, ``b_enc``,
``b_dec``, ``activation_function.threshold`` for JumpReLU (``f = pre · (pre > θ)``), ``W_skip
[d_out, d_in]`` for skip transcoders (``skip = x @ W_skip.T``). TopK there keeps the k largest
pre-activations with their sign; saescope's TopK also applies a ReLU, so the two agree wherever a
token has k positive pre-activations (trained transcoders' always do); the config says so.

SAELens v6: architectures ``transcoder`` (ReLU), ``skip_transcoder``, ``jumprelu_transcoder`` and
``jumprelu_skip_transcoder``, with ``d_out`` beside ``d_in``, ``apply_b_dec_to_input: false``, the
input hook in ``metadata.hook_name`` and the output hook in ``metadata.hook_name_out``, and
``W_skip [d_out, d_in]``. SAELens has no TopK or Gated transcoder: those are refused with the reason.

Gemma Scope 2 transcoders (read only): a safetensors file with ``w_enc [d_model, d_sae]``, ``w_dec``,
``b_enc``, ``b_dec``, ``threshold`` and, for skip transcoders, ``affine_skip_connection [d_in, d_out]``
(the keys circuit-tracer's public loader reads).

Hook names map onto saescope's sites: ``mlp.hook_in`` and ``ln2.hook_normalized`` are ``mlp_in``,
``hook_mlp_out`` and ``mlp.hook_out`` are ``mlp_out``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from saescope.errors import InvalidInput, MissingFile
from saescope.io.atomic import atomic_write, atomic_write_text
from saescope.io.checkpoint import load_checked_tensors
from saescope.lm.hookpoints import canonical_name, transformer_lens_name
from saescope.saes import SparseAutoencoder, create_sae

CIRCUIT_TRACER_CONFIG = "config.yaml"
CIRCUIT_TRACER_INPUT_HOOK = "mlp.hook_in"
CIRCUIT_TRACER_OUTPUT_HOOK = "hook_mlp_out"
_HOOK_SITES = {"mlp.hook_in": "mlp_in", "ln2.hook_normalized": "mlp_in", "hook_mlp_out": "mlp_out", "mlp.hook_out": "mlp_out",
               "hook_resid_mid": "resid_mid"}
SAELENS_TRANSCODERS = {("relu", False): "transcoder", ("relu", True): "skip_transcoder",
                       ("jumprelu", False): "jumprelu_transcoder", ("jumprelu", True): "jumprelu_skip_transcoder"}
_LAYER_FILE = re.compile(r"layer_(\d+)\.safetensors$")


def _require_transcoder(sae: SparseAutoencoder, target_format: str) -> None:
    if not sae.cfg.is_transcoder:
        raise InvalidInput(f"{target_format}: this is an SAE (it reconstructs {sae.cfg.hookpoint}), not a transcoder; "
                           "export SAEs with --to saelens")


def _layer_of(sae: SparseAutoencoder) -> int:
    match = re.fullmatch(r"layers\.(\d+)\.mlp_out", sae.cfg.target or "")
    if not match or sae.cfg.hookpoint != f"layers.{match.group(1)}.mlp_in":
        raise InvalidInput(f"circuit-tracer: a transcoder set replaces MLPs (layers.L.mlp_in → layers.L.mlp_out); this one reads "
                           f"{sae.cfg.hookpoint} and writes {sae.cfg.target}")
    return int(match.group(1))


def _rule(sae: SparseAutoencoder) -> str:
    """The inference rule in the circuit tools' terms: relu, jumprelu or topk."""
    if sae.architecture == "relu":
        return "relu"
    if sae.architecture == "topk":
        return "topk"
    if hasattr(sae, "threshold") and sae.architecture != "gated":
        return "jumprelu"  # JumpReLU and the batch-selection family, whose inference rule is a threshold
    raise InvalidInput(f"a {sae.architecture} transcoder has no equivalent in the circuit tools' formats (ReLU, JumpReLU, TopK); "
                       "train it as jumprelu, topk or relu to export")


# -- circuit-tracer ------------------------------------------------------------------------------------------
def export_circuit_tracer(transcoders: dict[int, SparseAutoencoder] | list[SparseAutoencoder], path: str | Path,
                          model_name: str | None = None) -> Path:
    """Write per-layer transcoders as a circuit-tracer transcoder set (``config.yaml`` + ``layer_{L}.safetensors``)."""
    import yaml
    from safetensors.torch import save_file

    items = list(transcoders.values()) if isinstance(transcoders, dict) else list(transcoders)
    if not items:
        raise InvalidInput("circuit-tracer: no transcoders to export")
    by_layer: dict[int, SparseAutoencoder] = {}
    for sae in items:
        _require_transcoder(sae, "circuit-tracer")
        layer = _layer_of(sae)
        if layer in by_layer:
            raise InvalidInput(f"circuit-tracer: two transcoders for layer {layer}; a set holds one per layer (export each set apart)")
        by_layer[layer] = sae
    missing = sorted(set(range(max(by_layer) + 1)) - set(by_layer))
    if missing:
        raise InvalidInput(f"circuit-tracer: a transcoder set needs one transcoder for every layer from 0 to {max(by_layer)}; layers {missing} "
                           "have none (train transcoders at every layer: --hookpoints 'layers.*.mlp_out' --kinds transcoder)")
    rules = {_rule(sae) for sae in by_layer.values()}
    widths = {sae.d_sae for sae in by_layer.values()}
    skips = {bool(sae.cfg.skip) for sae in by_layer.values()}
    ks = {int(sae.cfg.k) for sae in by_layer.values() if "topk" in rules}
    if len(rules) > 1 or len(widths) > 1 or len(skips) > 1 or len(ks) > 1:
        raise InvalidInput(f"circuit-tracer: a transcoder set shares one activation, width, k and skip setting; found rules {sorted(rules)}, "
                           f"widths {sorted(widths)}, skip {sorted(skips)}, k {sorted(ks)}")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    for layer, sae in sorted(by_layer.items()):
        tensors = _circuit_tracer_tensors(sae)
        atomic_write(folder / f"layer_{layer}.safetensors", lambda file, t=tensors: save_file(t, str(file)))
    rule = rules.pop()
    config: dict[str, Any] = {
        "model_kind": "transcoder_set",
        "model_name": model_name or next(iter(by_layer.values())).cfg.model_id,
        "feature_input_hook": CIRCUIT_TRACER_INPUT_HOOK,
        "feature_output_hook": CIRCUIT_TRACER_OUTPUT_HOOK,
    }
    if rule != "jumprelu":
        config["activation"] = rule
    if rule == "topk":
        config["k"] = ks.pop()
    note = ("# written by saescope: per-layer transcoders replacing each MLP (mlp_in -> mlp_out)\n"
            + ("# TopK: saescope keeps ReLU(top-k); equal to circuit-tracer's signed top-k wherever k pre-activations are positive\n"
               if rule == "topk" else ""))
    atomic_write_text(folder / CIRCUIT_TRACER_CONFIG, note + yaml.safe_dump(config, sort_keys=False))
    return folder


def _circuit_tracer_tensors(sae: SparseAutoencoder) -> dict[str, torch.Tensor]:
    tensors = {name: t.detach().float().contiguous().cpu() for name, t in sae.export_tensors().items()}
    out = {"W_enc": tensors["W_enc"].T.contiguous(), "W_dec": tensors["W_dec"], "b_enc": tensors["b_enc"], "b_dec": tensors["b_dec"]}
    if _rule(sae) == "jumprelu":
        out["activation_function.threshold"] = tensors["threshold"]
    if sae.cfg.skip:
        out["W_skip"] = tensors["W_skip"].T.contiguous()
    return out


def is_circuit_tracer(path: str | Path) -> bool:
    """A circuit-tracer transcoder set folder, or one of its ``layer_{L}.safetensors`` files."""
    target = Path(path)
    if target.is_dir():
        return (target / CIRCUIT_TRACER_CONFIG).is_file() and any(target.glob("layer_*.safetensors"))
    return target.is_file() and bool(_LAYER_FILE.search(target.name)) and (target.parent / CIRCUIT_TRACER_CONFIG).is_file()


def load_circuit_tracer_set(path: str | Path, device: str = "cpu") -> dict[int, SparseAutoencoder]:
    """Every layer's transcoder of a circuit-tracer set folder, by layer."""
    folder = Path(path)
    config = _circuit_tracer_config(folder)
    files = sorted((int(_LAYER_FILE.search(p.name).group(1)), p) for p in folder.glob("layer_*.safetensors"))  # type: ignore[union-attr]
    if not files:
        raise MissingFile(f"{folder}: no layer_{{L}}.safetensors files beside {CIRCUIT_TRACER_CONFIG}")
    return {layer: _load_circuit_tracer_layer(file, layer, config).to(device).eval() for layer, file in files}


def load_circuit_tracer(path: str | Path, hookpoint: str | None = None) -> SparseAutoencoder:
    """One transcoder of a circuit-tracer set: a ``layer_{L}.safetensors`` file, or the set's folder and ``hookpoint``
    (``layers.L.mlp_out`` or ``layers.L.mlp_in``) naming the layer."""
    target = Path(path)
    if target.is_file():
        match = _LAYER_FILE.search(target.name)
        assert match is not None
        return _load_circuit_tracer_layer(target, int(match.group(1)), _circuit_tracer_config(target.parent))
    layers = sorted(int(_LAYER_FILE.search(p.name).group(1)) for p in target.glob("layer_*.safetensors"))  # type: ignore[union-attr]
    match = re.fullmatch(r"layers\.(\d+)\.mlp_(?:in|out)", canonical_name(hookpoint or ""))
    if not match:
        raise InvalidInput(f"{target}: a circuit-tracer transcoder set holds layers {layers[0]}-{layers[-1]}; name one with "
                           "hookpoint='layers.L.mlp_out' (--hookpoint), or load them all with saescope.io.interop.load_circuit_tracer_set")
    layer = int(match.group(1))
    file = target / f"layer_{layer}.safetensors"
    if not file.is_file():
        raise MissingFile(f"{file}: no transcoder for layer {layer}; the set holds layers {layers}")
    return _load_circuit_tracer_layer(file, layer, _circuit_tracer_config(target))


def _circuit_tracer_config(folder: Path) -> dict[str, Any]:
    import yaml

    file = folder / CIRCUIT_TRACER_CONFIG
    if not file.is_file():
        raise MissingFile(f"{file}: missing; a circuit-tracer transcoder set has a config.yaml beside its layer files")
    try:
        config = yaml.safe_load(file.read_text())
    except yaml.YAMLError as error:
        raise InvalidInput(f"{file}: not valid YAML ({error})") from None
    if not isinstance(config, dict):
        raise InvalidInput(f"{file}: expected a mapping with model_kind, feature_input_hook and feature_output_hook")
    kind = config.get("model_kind", "transcoder_set")
    if kind != "transcoder_set":
        raise InvalidInput(f"{file}: model_kind {kind!r}: saescope reads per-layer transcoder sets; cross-layer transcoders are not built yet")
    for hook in ("feature_input_hook", "feature_output_hook"):
        if config.get(hook, "") not in _HOOK_SITES:
            raise InvalidInput(f"{file}: {hook} {config.get(hook)!r} is not a site saescope knows; known: {sorted(_HOOK_SITES)}")
    return config


def _load_circuit_tracer_layer(file: Path, layer: int, config: dict[str, Any]) -> SparseAutoencoder:
    from safetensors.torch import load_file

    tensors = {name: t.float() for name, t in load_file(str(file)).items()}
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        if name not in tensors:
            raise InvalidInput(f"{file}: missing {name}; a circuit-tracer transcoder holds W_enc, W_dec, b_enc, b_dec")
    d_sae, d_in = tensors["W_enc"].shape
    d_out = tensors["b_dec"].shape[0]
    activation = config.get("activation")
    if "activation_function.threshold" in tensors:
        architecture, options = "jumprelu", {}
        threshold = tensors.pop("activation_function.threshold")
        if bool((threshold < 0).any()):
            raise InvalidInput(f"{file}: a negative JumpReLU threshold passes negative pre-activations, which saescope's JumpReLU "
                               "(non-negative activations) cannot represent")
    elif activation == "topk":
        k = config.get("k") or (int(tensors["k"]) if "k" in tensors else None)
        if k is None:
            raise InvalidInput(f"{file.parent / CIRCUIT_TRACER_CONFIG}: activation topk needs k")
        architecture, options = "topk", {"k": int(k)}
    elif activation in (None, "relu"):
        architecture, options = "relu", {}
    else:
        raise InvalidInput(f"{file.parent / CIRCUIT_TRACER_CONFIG}: activation {activation!r} is not one saescope reads (relu, topk, or JumpReLU weights)")
    tensors.pop("k", None)
    input_site, output_site = _HOOK_SITES[config["feature_input_hook"]], _HOOK_SITES[config["feature_output_hook"]]
    skip = "W_skip" in tensors
    sae = create_sae(architecture, int(d_in), int(d_sae), hookpoint=f"layers.{layer}.{input_site}", target=f"layers.{layer}.{output_site}",
                     d_out=int(d_out), skip=skip, model_id=config.get("model_name"), **options)
    ours = {"W_enc": tensors["W_enc"].T.contiguous(), "W_dec": tensors["W_dec"], "b_enc": tensors["b_enc"], "b_dec": tensors["b_dec"]}
    if architecture == "jumprelu":
        ours["threshold"] = threshold
    if skip:
        ours["W_skip"] = tensors["W_skip"].T.contiguous()
    load_checked_tensors(sae, ours, file, "W_enc and b_dec")
    sae.normalization = {"method": "none", "folded": True, "note": "loaded from a circuit-tracer transcoder set"}
    sae.training_summary = {"source": "circuit_tracer", "path": str(file)}
    return sae.eval()


# -- SAELens --------------------------------------------------------------------------------------------------
def saelens_transcoder_architecture(sae: SparseAutoencoder) -> str:
    """The SAELens architecture of a transcoder, or a refusal naming why there is none."""
    rule = _rule(sae)
    name = SAELENS_TRANSCODERS.get((rule, bool(sae.cfg.skip)))
    if name is None:
        raise InvalidInput(f"SAELens has no {rule} transcoder (it has {sorted(set(SAELENS_TRANSCODERS.values()))}); export this one "
                           "to circuit-tracer (--to circuit-tracer), or train the transcoder as jumprelu or relu")
    return name


def saelens_transcoder_fields(sae: SparseAutoencoder) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config fields beyond an SAE's, tensors) of a transcoder in SAELens's layout."""
    architecture = saelens_transcoder_architecture(sae)
    tensors = {name: t.detach().float().contiguous().cpu() for name, t in sae.export_tensors().items()}
    if sae.cfg.skip:
        tensors["W_skip"] = tensors["W_skip"].T.contiguous()  # SAELens: skip = x @ W_skip.T, W_skip [d_out, d_in]
    fields = {"architecture": architecture, "d_out": sae.d_out, "apply_b_dec_to_input": False,
              "hook_name_out": transformer_lens_name(sae.cfg.target) or sae.cfg.target}
    return fields, tensors


def load_saelens_transcoder(cfg: dict[str, Any], tensors: dict[str, torch.Tensor], weights_file: Path) -> SparseAutoencoder:
    """A SAELens transcoder folder's config and tensors as a saescope transcoder."""
    architecture = cfg["architecture"]
    rule, skip = next(key for key, name in SAELENS_TRANSCODERS.items() if name == architecture)
    metadata = cfg.get("metadata") or {}
    hook_in = metadata.get("saescope_hookpoint") or metadata.get("hook_name") or cfg.get("hook_name")
    hook_out = metadata.get("saescope_target") or metadata.get("hook_name_out") or cfg.get("hook_name_out")
    if not hook_out:
        raise InvalidInput(f"{weights_file.parent / 'cfg.json'}: a SAELens transcoder config needs hook_name_out (the site it writes)")
    d_in, d_sae, d_out = int(cfg["d_in"]), int(cfg["d_sae"]), int(cfg.get("d_out") or cfg["d_in"])
    if skip:
        if "W_skip" not in tensors:
            raise InvalidInput(f"{weights_file}: a {architecture} holds W_skip")
        tensors = {**tensors, "W_skip": tensors["W_skip"].float().T.contiguous()}
    sae = create_sae(rule, d_in, d_sae, hookpoint=canonical_name(hook_in) if hook_in else None, target=canonical_name(hook_out),
                     d_out=d_out, skip=skip, model_id=metadata.get("model_name") or cfg.get("model_name"))
    load_checked_tensors(sae, {name: t.float() for name, t in tensors.items()}, weights_file, "cfg.json")
    return sae.eval()


# -- Gemma Scope 2 -------------------------------------------------------------------------------------------
GEMMA_SCOPE_2_KEYS = ("w_enc", "w_dec", "b_enc", "b_dec", "threshold")


def is_gemma_scope_2(path: str | Path) -> bool:
    """A Gemma Scope 2 safetensors file (lower-case ``w_enc``/``w_dec`` and a ``threshold``)."""
    target = Path(path)
    if not (target.is_file() and target.suffix == ".safetensors"):
        return False
    from safetensors import safe_open

    try:
        with safe_open(str(target), framework="pt") as file:
            keys = set(file.keys())
    except Exception:  # noqa: BLE001 - any unreadable file is simply not this format
        return False
    return set(GEMMA_SCOPE_2_KEYS) <= keys


def load_gemma_scope_2(path: str | Path, hookpoint: str | None = None, target: str | None = None,
                       model_id: str | None = None) -> SparseAutoencoder:
    """A Gemma Scope 2 JumpReLU SAE or transcoder. A transcoder needs its sites: ``hookpoint``
    (``layers.L.mlp_out`` or ``layers.L.mlp_in`` names the layer) or a path with ``layer_L`` and ``transcoder``."""
    from safetensors.torch import load_file

    file = Path(path)
    tensors = {name: t.float() for name, t in load_file(str(file)).items()}
    missing = [name for name in GEMMA_SCOPE_2_KEYS if name not in tensors]
    if missing:
        raise InvalidInput(f"{file}: missing {missing}; a Gemma Scope 2 file holds {list(GEMMA_SCOPE_2_KEYS)}")
    d_in, d_sae = tensors["w_enc"].shape
    d_out = tensors["b_dec"].shape[0]
    skip = "affine_skip_connection" in tensors
    transcoder = skip or "transcoder" in str(file).lower() or target is not None or d_out != d_in
    options: dict[str, Any] = {"model_id": model_id}
    if transcoder:
        layer = _layer_from(hookpoint, str(file))
        if layer is None:
            raise InvalidInput(f"{file}: a Gemma Scope 2 transcoder needs its layer: pass hookpoint='layers.L.mlp_out' (--hookpoint)")
        options.update(hookpoint=f"layers.{layer}.mlp_in", target=target or f"layers.{layer}.mlp_out", d_out=int(d_out), skip=skip)
    else:
        options["hookpoint"] = canonical_name(hookpoint) if hookpoint else None
    sae = create_sae("jumprelu", int(d_in), int(d_sae), **options)
    ours = {"W_enc": tensors["w_enc"], "W_dec": tensors["w_dec"], "b_enc": tensors["b_enc"], "b_dec": tensors["b_dec"],
            "threshold": tensors["threshold"]}
    if skip:
        ours["W_skip"] = tensors["affine_skip_connection"]
    load_checked_tensors(sae, ours, file, "w_enc")
    sae.normalization = {"method": "none", "folded": True, "note": "Gemma Scope 2: normalisation folded into the weights"}
    sae.training_summary = {"source": "gemma_scope_2", "path": str(file)}
    return sae.eval()


def _layer_from(hookpoint: str | None, path: str) -> int | None:
    if hookpoint:
        match = re.fullmatch(r"layers\.(\d+)\.\w+", canonical_name(hookpoint))
        if match:
            return int(match.group(1))
    match = re.search(r"layer_(\d+)", path)
    return int(match.group(1)) if match else None


def suite_transcoder_sets(folder: str | Path) -> dict[str, list[str]]:
    """A suite's transcoders grouped into sets: ``{set name: [paths, by layer]}``, one set per kind × architecture × width × L0."""
    from saescope.io.suite_index import read_index

    sets: dict[str, list[tuple[int, str]]] = {}
    for entry in read_index(folder)["saes"]:
        if entry.get("kind", "sae") != "sae":
            sets.setdefault(entry["path"].rsplit("/", 1)[-1], []).append((int(entry["layer"]), entry["path"]))
    return {name: [path for _layer, path in sorted(members)] for name, members in sets.items()}


def export_suite_circuit_tracer(folder: str | Path, out: str | Path, name: str | None = None) -> tuple[str, Path]:
    """Write one of a suite's transcoder sets (``name``, e.g. ``transcoder-jumprelu-w4608-l0_32``) for circuit-tracer."""
    from saescope.io.checkpoint import load

    sets = suite_transcoder_sets(folder)
    if not sets:
        raise InvalidInput(f"{folder}: the suite holds no transcoders; train them with --hookpoints 'layers.*.mlp_out' --kinds transcoder")
    if name is None and len(sets) > 1:
        raise InvalidInput(f"{folder}: the suite holds {len(sets)} transcoder sets; choose one with --set NAME: {sorted(sets)}")
    name = name or next(iter(sets))
    if name not in sets:
        raise InvalidInput(f"{folder}: no transcoder set {name!r}; the suite holds {sorted(sets)}")
    return name, export_circuit_tracer([load(Path(folder) / path) for path in sets[name]], out)
