"""The plan compiled into jobs, in one place: every path (live model, cache, arrays, multi-layer) and the
suite index, the estimate and the trainer read the same ``PlannedJob`` list.

A sweep is hookpoints × kinds × architectures × widths × target L0s. The kind says what a job reads
and writes:

- ``sae``: reads a hookpoint and reconstructs it (or, with ``multilayer``, reads every hookpoint);
- ``transcoder``: at an ``mlp_out`` hookpoint, reads the same layer's ``mlp_in`` and predicts
  ``mlp_out`` (the MLP's computation, replaced by sparse features);
- ``skip_transcoder``: a transcoder plus a linear skip connection ``x @ W_skip`` (Paulo et al. 2025).

A job's name is its folder under the output (``layers.6.mlp_out/transcoder-topk-w4608-l0_32``); a job
is planned without a model, from the sites' widths, so an estimate, an index and a run agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from saescope.errors import InvalidInput
from saescope.io.suite_index import layer_and_site, sae_folder_name
from saescope.jobs import ReadSpec, SaeJob, create_job, parameter_count, sets_k
from saescope.plan import PlanError, SweepPlan, resolve_width

KINDS = ("sae", "transcoder", "skip_transcoder")
"""What a job reads and writes (see the module docstring)."""
TRANSCODER_KINDS = ("transcoder", "skip_transcoder")
MULTILAYER_FOLDER = "multilayer"
"""Folder (under a suite) of the SAEs that read every hookpoint of the run."""
RUN_HOOKPOINTS = "this run's hookpoints"


@dataclass(frozen=True)
class PlannedJob:
    """One SAE or transcoder of a plan, before it is built: enough to index, estimate and build it."""

    name: str
    """Its folder under the output, e.g. ``layers.6.resid_post/topk-w4608-l0_32``; its key in checkpoints."""
    hookpoint: str
    """The site it stands for in tables: what it reads (an SAE), writes (a transcoder), or ``multilayer``."""
    layer: int
    """The layer of ``hookpoint`` (-1 for a multi-layer SAE or plain arrays)."""
    kind: str
    architecture: str
    d_in: int
    width: int
    target_l0: float | None
    reads: ReadSpec
    d_out: int | None = None
    """The target site's width (transcoders)."""
    options: dict[str, Any] = field(default_factory=dict)
    """SAE and training fields handed to ``create_job`` (objective, lr, aux_k, ...)."""

    @property
    def hookpoints(self) -> tuple[str, ...]:
        """Every site the job's data must provide (what it reads, then its target)."""
        return self.reads.hookpoints + ((self.reads.target,) if self.reads.target else ())

    def site_widths(self) -> dict[str, int]:
        """``{site: width}`` of every site the job's data must provide."""
        widths = {h: self.d_in for h in self.reads.hookpoints}
        if self.reads.target:
            widths[self.reads.target] = self.d_out or self.d_in
        return widths

    @property
    def n_params(self) -> int:
        skip = self.d_in * (self.d_out or self.d_in) if self.kind == "skip_transcoder" else 0
        return parameter_count(self.architecture, self.d_in, self.width) + skip

    def build(self, model_id: str | None = None) -> SaeJob:
        """The job, with a freshly initialised SAE (seed torch first for a reproducible run)."""
        options = dict(self.options)
        if self.target_l0 is not None and ("sparsity_coefficient" not in options or sets_k(self.architecture, options.get("objective"))):
            options.setdefault("target_l0", self.target_l0)  # a fixed λ means no target-L0 controller; k needs its target
        if self.kind in TRANSCODER_KINDS:
            options.update(d_out=self.d_out, skip=self.kind == "skip_transcoder")
        if model_id is not None:
            options.setdefault("model_id", model_id)
        return create_job(self.architecture, self.d_in, self.width, name=self.name, reads=self.reads, **options)

    def jobs(self, widths: dict[str, int] | None = None, model_id: str | None = None) -> dict[str, SaeJob]:
        """``{name: job}``: the same call as ``SaeSpec.jobs``, so training takes either."""
        return {self.name: self.build(model_id)}

    def index_entry(self) -> dict[str, Any]:
        """The job's entry in ``suite.json`` (metrics are added after training)."""
        sites = {layer_and_site(h)[1] for h in self.reads.hookpoints}
        entry: dict[str, Any] = {
            "path": self.name, "hookpoint": self.hookpoint, "layer": self.layer,
            "site": layer_and_site(self.hookpoint)[1] if self.reads.target else (sites.pop() if len(sites) == 1 else self.hookpoint),
            "kind": self.kind, "architecture": self.architecture, "width": self.width, "d_in": self.d_in, "target_l0": self.target_l0,
        }
        if self.reads.stacked:
            entry["hookpoints"] = list(self.reads.hookpoints)  # a multi-layer SAE: its "hookpoint" is the folder name
        if self.reads.target:
            entry["reads"] = self.reads.hookpoints[0]
        return entry


def transcoder_input(hookpoint: str, where: str = "hookpoints") -> str:
    """The site a transcoder writing ``hookpoint`` reads: ``layers.L.mlp_out`` → ``layers.L.mlp_in``."""
    layer, site = layer_and_site(hookpoint)
    if site != "mlp_out":
        raise PlanError(f"{where}: {hookpoint!r} is not an MLP output; a transcoder writes layers.L.mlp_out (it reads layers.L.mlp_in) "
                        "— give mlp_out hookpoints, or kinds: [sae] for SAEs here")
    return f"layers.{layer}.mlp_in"


def read_sites(sweep: SweepPlan, hookpoints: list[str]) -> list[str]:
    """The sites a run must harvest beyond ``hookpoints`` (the resolved sweep hookpoints): transcoders' inputs."""
    if not any(kind in TRANSCODER_KINDS for kind in sweep.kinds):
        return []
    outputs = [h for h in hookpoints if layer_and_site(h)[1] == "mlp_out"]
    if not outputs:
        raise PlanError(f"kinds: {[k for k in sweep.kinds if k in TRANSCODER_KINDS]} need mlp_out hookpoints (a transcoder reads layers.L.mlp_in "
                        f"and writes layers.L.mlp_out); the hookpoints are {hookpoints}")
    return [transcoder_input(h) for h in outputs if transcoder_input(h) not in hookpoints]


def plan_jobs(sweep: SweepPlan, widths: dict[str, int], hookpoints: list[str] | None = None, source: str = "",
              on_model: bool = True) -> list[PlannedJob]:
    """Every job of ``sweep`` at the resolved ``hookpoints`` (default: every key of ``widths``).

    ``widths`` maps each site the run harvests to its width: the hookpoints and their ``read_sites``.
    ``widths == {"": d_in}`` plans for plain arrays (no hookpoint; one unnamed job per architecture when
    the sweep has a single width and target). Refuses combinations that cannot train, naming the field.
    """
    where = f"{source}: " if source else ""
    arrays = list(widths) == [""]
    requested = list(widths) if hookpoints is None else list(hookpoints)
    missing = sorted(set(requested) - set(widths))
    if missing:
        raise PlanError(f"{where}hookpoints: no width known for {missing}; the run harvests {sorted(widths)}")
    groups: list[tuple[str, str, int, ReadSpec, int, int | None]] = []  # (folder, kind, layer, reads, d_in, d_out)
    if arrays:
        if any(kind != "sae" for kind in sweep.kinds):
            raise PlanError(f"{where}kinds: transcoders read a model's MLP input and output; arrays train SAEs (kinds: [sae])")
        groups.append(("", "sae", -1, ReadSpec(), widths[""], None))
    else:
        baselines = requested
        if sweep.multilayer:
            if any(kind != "sae" for kind in sweep.kinds):
                raise PlanError(f"{where}kinds: multilayer transcoders (cross-layer transcoders) are not built yet; "
                                "train per-layer transcoders without multilayer")
            groups.append((MULTILAYER_FOLDER, "sae", -1, ReadSpec(tuple(requested)), stacked_width({h: widths[h] for h in requested}, source), None))
            try:
                from saescope.lm.hookpoints import select_hookpoints

                baselines = select_hookpoints(sweep.multilayer_baselines, requested, RUN_HOOKPOINTS)
            except InvalidInput as error:
                raise PlanError(f"{where}multilayer_baselines: {error}") from None
        for kind in sweep.kinds:
            chosen = baselines if kind == "sae" else [h for h in requested if layer_and_site(h)[1] == "mlp_out"]
            if kind != "sae" and not chosen:
                raise PlanError(f"{where}kinds: {kind} needs an mlp_out hookpoint (it reads layers.L.mlp_in and writes layers.L.mlp_out); "
                                f"the hookpoints are {requested}")
            if kind != "sae" and "sae" not in sweep.kinds and len(chosen) < len(requested):
                others = [h for h in requested if h not in chosen]
                raise PlanError(f"{where}hookpoints: {others} are not MLP outputs, and kinds has no 'sae' to train there; "
                                "add sae to kinds or give only mlp_out hookpoints")
            for hookpoint in chosen:
                layer = layer_and_site(hookpoint)[0]
                if kind == "sae":
                    groups.append((hookpoint, kind, layer, ReadSpec((hookpoint,)), widths[hookpoint], None))
                else:
                    read = transcoder_input(hookpoint)
                    if read not in widths:
                        raise PlanError(f"{where}hookpoints: the run does not harvest {read}, the input of the transcoder at {hookpoint}; "
                                        "add it to the sites read (saescope.plan_jobs.read_sites)")
                    groups.append((hookpoint, kind, layer, ReadSpec((read,), target=hookpoint), widths[read], widths[hookpoint]))
    single = arrays and len(sweep.widths) == 1 and len(sweep.target_l0s) == 1
    planned: list[PlannedJob] = []
    seen: set[str] = set()
    for folder, kind, layer, reads, d_in, d_out in groups:
        for arch in sweep.architectures:
            options = sweep.options_for(arch) if on_model else _array_options(sweep, arch)
            for width in sweep.widths:
                n = resolve_width(width, d_in, source)
                for target in sweep.target_l0s:
                    if target > n:
                        raise PlanError(f"{where}widths: {width!r} gives {n} latents at {folder or 'the data'}, fewer than target L0 {target:g}; "
                                        "use a larger width or a smaller target")
                    if sets_k(arch, options.get("objective")) and round(target) < 1:
                        raise PlanError(f"{where}target_l0s: {arch} needs k = round(target) >= 1, got {target:g}")
                    leaf = arch if single else job_folder_name(kind, arch, n, float(target))
                    name = f"{folder}/{leaf}" if folder else leaf
                    if name in seen:
                        raise PlanError(f"{where}widths: two entries give {n} latents at {folder or 'the data'}; list each width once")
                    seen.add(name)
                    planned.append(PlannedJob(name, folder, layer, kind, arch, d_in, n, float(target), reads, d_out, dict(options)))
    return planned


def job_folder_name(kind: str, architecture: str, width: int, target_l0: float) -> str:
    """``topk-w4608-l0_32`` for an SAE; the kind leads for a transcoder (``transcoder-topk-w4608-l0_32``)."""
    name = sae_folder_name(architecture, width, target_l0)
    return name if kind == "sae" else f"{kind}-{name}"


def stacked_width(widths: dict[str, int], source: str = "") -> int:
    """The d_in of a multi-layer SAE over ``widths`` ({hookpoint: d_in}); refuses fewer than two hookpoints or mixed widths."""
    where = f"{source}: " if source else ""
    if len(widths) < 2:
        raise PlanError(f"{where}multilayer: needs at least two hookpoints, the run has {list(widths)}")
    if len(set(widths.values())) > 1:
        raise PlanError(f"{where}multilayer: the hookpoints have different widths {widths}; a multi-layer SAE reads one width")
    return next(iter(widths.values()))


def _array_options(sweep: SweepPlan, arch: str) -> dict[str, Any]:
    """Arrays keep the objectives' default lr (the plan's lr when given); the model-only lr base does not apply."""
    options = dict(sweep.options.get(arch, {}))
    if sweep.lr_for(arch) is not None:
        options["lr"] = sweep.lr_for(arch)
    return options
