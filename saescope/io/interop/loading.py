"""``saescope.load(path_or_hub_id)``: any SAE checkpoint, whatever wrote it.

Local paths are recognised by their files (``detect_format``). Anything else that looks like
``owner/repo[/path/in/repo]`` is fetched from the Hugging Face hub with ``huggingface_hub`` (only the
files the format needs) and then read the same way; Gemma Scope repositories are recognised by their
``params.npz``.
"""

from __future__ import annotations

from pathlib import Path

from saescope.errors import MissingDependency, MissingFile
from saescope.io.interop.formats import detect_format, load_gemma_scope, load_saelens
from saescope.saes import SparseAutoencoder
from saescope.saes.stacked import at_hookpoint, stacked_hookpoints


def load_sae(path: str | Path, device: str = "cpu", hookpoint: str | None = None) -> SparseAutoencoder:
    """Load a saescope, SAELens, Gemma Scope (1 or 2) SAE or transcoder, or a circuit-tracer transcoder, from a local path or a hub id.

    ``hookpoint`` records where the SAE reads; for a multi-layer SAE it picks one of its layers, and the
    SAE returned takes that layer's raw activations; for a circuit-tracer set or a Gemma Scope 2
    transcoder it names the layer (``layers.L.mlp_out``).
    """
    local = Path(path).expanduser()
    if local.exists():
        kind = detect_format(local)
        source = str(path)
    elif _looks_like_hub_id(str(path)):
        local, kind = _download(str(path))
        source = str(path)
    else:
        raise MissingFile(f"{path}: no such SAE folder or file (a hub id looks like owner/repo/path/in/repo)")
    if kind == "saescope":
        from saescope.io.checkpoint import load

        sae = load(str(local), device=device)
    elif kind == "saelens":
        sae = load_saelens(local)
    elif kind == "circuit_tracer":
        from saescope.io.interop.transcoders import load_circuit_tracer

        return load_circuit_tracer(local, hookpoint=hookpoint).to(device).eval()  # a set's layer is named by hookpoint
    elif kind == "gemma_scope_2":
        from saescope.io.interop.transcoders import load_gemma_scope_2

        file = local / "params.safetensors" if local.is_dir() else local
        return load_gemma_scope_2(file, hookpoint=hookpoint).to(device).eval()
    else:
        sae = load_gemma_scope(local, hookpoint=hookpoint)
        if hookpoint is None and sae.cfg.hookpoint is None:
            from saescope.io.interop.formats import gemma_scope_hookpoint

            sae.cfg.hookpoint = gemma_scope_hookpoint(source)
    if hookpoint is not None and stacked_hookpoints(sae):
        return at_hookpoint(sae, hookpoint).to(device).eval()  # one layer of a multi-layer SAE, its scale folded in
    if hookpoint is not None:
        sae.cfg.hookpoint = hookpoint
    return sae.to(device).eval()


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) >= 2 and not text.startswith((".", "/", "~")) and all(parts)


def hub_unreachable(hub_id: str) -> str:
    """The message for a hub id that cannot be fetched because the hub cannot be reached."""
    return (f"{hub_id}: could not reach the Hugging Face hub (no network, a proxy, or HF_HUB_OFFLINE=1), and it is not in "
            "the local hub cache; connect to the internet, or download it on a machine that can and pass the local folder")


def _download(hub_id: str) -> tuple[Path, str]:
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
        )
    except ImportError as error:  # pragma: no cover - transformers depends on huggingface_hub
        raise MissingDependency("loading from the hub needs huggingface_hub (pip install huggingface_hub)") from error
    parts = hub_id.split("/")
    repo, sub = "/".join(parts[:2]), "/".join(parts[2:])
    prefix = f"{sub}/" if sub else ""
    try:
        try:
            npz = hf_hub_download(repo, f"{prefix}params.npz")
            return Path(npz), "gemma_scope"
        except LocalEntryNotFoundError:
            raise  # no network: not "the file is missing"
        except EntryNotFoundError:
            cfg = hf_hub_download(repo, f"{prefix}cfg.json")
            hf_hub_download(repo, f"{prefix}sae_weights.safetensors")
            folder = Path(cfg).parent
            return folder, detect_format(folder)
    except LocalEntryNotFoundError:
        raise MissingFile(hub_unreachable(hub_id)) from None
    except RepositoryNotFoundError:
        raise MissingFile(f"{hub_id}: no such repository on the Hugging Face hub ({repo})") from None
    except EntryNotFoundError:
        raise MissingFile(f"{hub_id}: {repo} has no params.npz or cfg.json + sae_weights.safetensors under {sub or 'its root'!r}") from None
