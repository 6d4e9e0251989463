"""The interface every SAE architecture implements: parameters, ``encode``, ``decode``. Nothing else.

Design constraints:
- An SAE is a plain ``nn.Module`` with one weight orientation: ``W_enc [d_in, d_sae]``,
  ``W_dec [d_sae, d_in]``, ``b_enc [d_sae]``, ``b_dec [d_in]`` (and ``threshold [d_sae]`` where it
  applies), the names SAELens and Gemma Scope use, so checkpoints travel.
- How an SAE is *trained* (its loss, optimiser and lr defaults, input normalisation, decoder-norm
  constraint, λ or k control) is not here: it is the job of a registered objective
  (``saescope.objectives``). The module holds only what inference needs, so one architecture can be
  trained by several recipes (JumpReLU by the step loss or the tanh loss) and a checkpoint is the same
  file whichever recipe made it.
- ``encode_code`` returns a ``FeatureCode``: architectures that select latents return
  (indices, values) and never build the dense matrix unless asked.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from saescope.errors import InvalidInput
from saescope.saes.code import FeatureCode
from saescope.saes.sparse_ops import (
    decode_dense,
    decode_entries,
    decode_sparse,
    sparse_pays,
)

INPUT_TRANSFORMS = {"log1p": "log(1 + x) of non-negative counts"}


@dataclass
class SaeConfig:
    """Fields shared by every architecture; each architecture subclasses it with its own inference fields."""

    d_in: int
    """Width of the activations the SAE reads."""
    d_sae: int
    """Number of latents (dictionary size)."""
    hookpoint: str | None = None
    """Where the activations come from (a module path in the model), for the record."""
    model_id: str | None = None
    """The model the activations come from, for the record."""
    input_transform: str | None = None
    """A nonlinear transform the SAE applies to its input first (``"log1p"`` for counts; see
    ``INPUT_TRANSFORMS``). It cannot be folded into weights, so it is part of the SAE: the SAE takes
    the raw vectors, and it reconstructs the *transformed* vectors (``reconstruction_target``)."""
    target: str | None = None
    """The site it writes when that is not the site it reads (a transcoder: ``hookpoint`` is the MLP's input,
    ``target`` its output). None: an SAE, which reconstructs its input."""
    d_out: int | None = None
    """Width of what the decoder writes (``target``'s width). None: ``d_in``."""
    skip: bool = False
    """A linear skip connection ``x @ W_skip`` [d_in, d_out] added to the output (a skip transcoder)."""

    def __post_init__(self) -> None:
        if self.input_transform is not None and self.input_transform not in INPUT_TRANSFORMS:
            raise InvalidInput(f"input_transform must be one of {sorted(INPUT_TRANSFORMS)} or None, got {self.input_transform!r}")
        for name in ("d_in", "d_sae"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise InvalidInput(f"{name} must be a positive integer, got {value!r}")
        if self.d_out is not None and (not isinstance(self.d_out, int) or isinstance(self.d_out, bool) or self.d_out <= 0):
            raise InvalidInput(f"d_out must be a positive integer or None, got {self.d_out!r}")
        if self.d_out == self.d_in and self.target is None:
            self.d_out = None  # an SAE: one width
        if (self.skip or self.d_out is not None) and self.target is None:
            raise InvalidInput("skip connections and a separate output width are for transcoders: give target=<the site the "
                               "transcoder writes, e.g. layers.3.mlp_out>")
        if self.target is not None and self.input_transform is not None:
            raise InvalidInput(f"input_transform {self.input_transform!r} applies to SAEs on counts, not to transcoders (target={self.target!r})")

    @property
    def is_transcoder(self) -> bool:
        """True when the SAE writes another site than it reads."""
        return self.target is not None

    @property
    def output_width(self) -> int:
        return self.d_in if self.d_out is None else self.d_out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SaeConfig:
        known = cls.field_names()
        unknown = sorted(set(values) - known)
        if unknown:
            raise InvalidInput(f"unknown {cls.__name__} fields {unknown}; known fields: {sorted(known)}")
        return cls(**values)


def unit_norm_rows(matrix: Tensor) -> None:
    """Scale each row of ``matrix`` to unit L2 norm, in place."""
    matrix.div_(matrix.norm(dim=1, keepdim=True).clamp_min(1e-8))


class SparseAutoencoder(nn.Module):
    """Base class: shared parameters, decode, folding an input scale, export under published names.

    Subclasses set ``architecture``, ``config_class`` and ``default_objective`` and implement
    ``encode`` (dense) or ``encode_code`` (selected latents).
    """

    architecture: ClassVar[str] = ""
    config_class: ClassVar[type[SaeConfig]] = SaeConfig
    default_objective: ClassVar[str] = ""
    """The objective that trains this architecture unless a job names another (saescope.objectives)."""
    apply_b_dec_to_input: ClassVar[bool] = False
    """Subtract b_dec from the input before encoding (pre-encoder bias)."""
    scaled_tensor_names: ClassVar[tuple[str, ...]] = ("b_enc", "b_dec")
    """Tensors measured in input units: divided by c when folding an input scale c into the weights."""
    saelens_architecture: ClassVar[str | None] = None
    """The SAELens architecture whose inference rule this module's tensors follow (None: not exportable)."""

    def __init__(self, cfg: SaeConfig) -> None:
        super().__init__()
        if not isinstance(cfg, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(cfg).__name__}")
        self.cfg = cfg
        d_in, d_sae, d_out = cfg.d_in, cfg.d_sae, cfg.output_width
        if cfg.is_transcoder and type(self).apply_b_dec_to_input:
            # b_dec lives in the output space of a transcoder: it cannot also be the input's pre-encoder bias
            self.apply_b_dec_to_input = False
        self.W_enc = nn.Parameter(torch.empty(d_in, d_sae))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(torch.empty(d_sae, d_out))
        self.b_dec = nn.Parameter(torch.zeros(d_out))
        if cfg.skip:
            self.W_skip = nn.Parameter(torch.zeros(d_in, d_out))
        self.add_parameters()
        self.normalization: dict[str, Any] = {}
        """How training inputs were scaled and whether that scale is folded into the weights."""
        self.training_summary: dict[str, Any] = {}
        """What trained it (objective and its settings, tokens, lr, ...), written to cfg.json."""
        self.reset_parameters()

    # -- initialisation -------------------------------------------------------------------------
    def add_parameters(self) -> None:
        """Hook for architectures with extra tensors (a threshold, gate biases); runs before init."""

    def reset_parameters(self, decoder_row_norm: float = 1.0) -> None:
        """Kaiming-uniform decoder rows rescaled to ``decoder_row_norm``; W_enc = W_dec^T; biases 0; W_skip 0."""
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.W_dec, a=math.sqrt(5))
            self.W_dec.mul_(decoder_row_norm / self.W_dec.norm(dim=1, keepdim=True))
            self.tie_encoder()
            self.b_enc.zero_()
            self.b_dec.zero_()
            if self.cfg.skip:
                self.W_skip.zero_()

    @torch.no_grad()
    def tie_encoder(self) -> None:
        """W_enc = W_dec^T; a transcoder whose output width differs draws its own encoder columns of the same norms."""
        if self.W_dec.shape[1] == self.d_in:
            self.W_enc.copy_(self.W_dec.T)
            return
        nn.init.kaiming_uniform_(self.W_enc, a=math.sqrt(5))
        self.W_enc.mul_(self.W_dec.norm(dim=1) / self.W_enc.norm(dim=0).clamp_min(1e-12))

    @torch.no_grad()
    def set_decoder_row_norm(self, norm: float) -> None:
        """Rescale every decoder row to ``norm`` and tie the encoder to it (W_enc = W_dec^T), keeping directions."""
        self.W_dec.mul_(norm / self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))
        self.tie_encoder()

    # -- inference --------------------------------------------------------------------------------
    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def d_out(self) -> int:
        """Width of the output: ``d_in`` for an SAE, the target site's width for a transcoder."""
        return self.cfg.output_width

    def skip_output(self, x: Tensor) -> Tensor | None:
        """``x @ W_skip`` for a skip transcoder (raw input units), else None."""
        return x @ self.W_skip if self.cfg.skip else None

    def encoder_input(self, x: Tensor) -> Tensor:
        """The encoder's input (the input transform, then ``x - b_dec`` where the architecture subtracts it); checks the shape first."""
        if x.dim() != 2 or x.shape[1] != self.cfg.d_in:
            raise InvalidInput(self._shape_advice(x))
        x = self.transform_input(x)
        return x - self.b_dec if self.apply_b_dec_to_input else x

    def transform_input(self, x: Tensor) -> Tensor:
        """``x`` through the SAE's input transform (identity unless ``cfg.input_transform`` is set)."""
        transform = getattr(self.cfg, "input_transform", None)
        if transform is None:
            return x
        lowest = float(x.min()) if x.numel() else 0.0
        if lowest < 0:
            raise InvalidInput(f"this SAE reads log(1 + x) of counts (input_transform {transform!r}) but got a negative value "
                               f"({lowest:g}); give it the raw, non-negative counts, not log-transformed or centred data")
        return torch.log1p(x)

    def reconstruction_target(self, x: Tensor) -> Tensor:
        """What ``forward(x)`` reconstructs: ``x`` itself, or ``log1p(x)`` for an SAE with that input transform."""
        return self.transform_input(x)

    def _shape_advice(self, x: Tensor) -> str:
        shape = tuple(x.shape)
        if x.dim() > 2 and shape[-1] == self.cfg.d_in:
            return (f"the SAE takes [n_tokens, d_in={self.cfg.d_in}] activations, got {shape}: "
                    f"flatten the leading dimensions with x.reshape(-1, {self.cfg.d_in}) and reshape the result back")
        where = f" (trained on {self.cfg.hookpoint})" if self.cfg.hookpoint else ""
        return (f"the SAE{where} expects activations of width d_in={self.cfg.d_in}, got shape {shape}; "
                f"was it trained on another hookpoint or model?")

    def pre_activations(self, x: Tensor) -> Tensor:
        """x @ W_enc + b_enc, fused into one addmm."""
        return torch.addmm(self.b_enc, self.encoder_input(x), self.W_enc)

    def encode(self, x: Tensor) -> Tensor:
        """Latent activations f(x), dense [n_tokens, d_sae]."""
        return self.encode_code(x).dense()

    def encode_code(self, x: Tensor) -> FeatureCode:
        """Latent activations as a ``FeatureCode`` (selected (indices, values) where the architecture selects)."""
        if type(self).encode is SparseAutoencoder.encode:
            raise NotImplementedError(f"{type(self).__name__} must implement encode or encode_code")
        return FeatureCode.from_dense(self.encode(x))

    def decode(self, feature_acts: Tensor) -> Tensor:
        """x̂ = f @ W_dec + b_dec."""
        return torch.addmm(self.b_dec, feature_acts, self.W_dec)

    def decode_code(self, code: FeatureCode) -> Tensor:
        """x̂ from a ``FeatureCode``: gathers k decoder rows per token when the code is selected and k ≪ d_sae."""
        if not code.is_sparse:
            return self.decode(code.dense())
        if code.is_entries:
            return decode_entries(code.rows, code.indices, code.values, code.n_tokens, self.W_dec, self.b_dec)
        decode = decode_sparse if sparse_pays(code.indices.shape[-1], self.d_sae, self.W_dec.device) else decode_dense
        return decode(code.indices, code.values, self.W_dec, self.b_dec)

    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction x̂ of ``x`` [n_tokens, d_in], or a transcoder's prediction of its target (skip included).

        Training losses live in the objectives.
        """
        return self.output(x, self.encode_code(x))

    def output(self, x: Tensor, code: FeatureCode) -> Tensor:
        """What the SAE writes for input ``x`` given its ``code``: the decoded code, plus a skip transcoder's ``x @ W_skip``."""
        decoded = self.decode_code(code)
        skip = self.skip_output(x)
        return decoded if skip is None else decoded + skip

    # -- conversions ---------------------------------------------------------------------------------
    def export_tensors(self) -> dict[str, Tensor]:
        """The tensors a checkpoint stores, under their published names (e.g. ``threshold``)."""
        return {name: t.detach() for name, t in self.state_dict().items()}

    @torch.no_grad()
    def load_export_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Inverse of ``export_tensors``; the caller has validated names and shapes."""
        self.load_state_dict(tensors, strict=True)

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        """Make an SAE trained on ``scale * x`` take raw ``x``: divide biases and thresholds by ``scale``.

        Weights stay as they are, so unit-norm decoder rows stay unit norm (dictionary_learning's
        choice; SAELens instead rescales W_enc and W_dec). Feature activations come out divided by
        ``scale``, i.e. in raw input units.
        """
        self.fold_scales(scale, scale)

    @torch.no_grad()
    def fold_scales(self, input_scale: float, output_scale: float) -> None:
        """Make a transcoder trained to map ``c_in·x`` to ``c_out·y`` map raw ``x`` to raw ``y``, exactly.

        Positively homogeneous encoders (ReLU, JumpReLU, TopK, Gated) give f(c_in·x; W_enc, b) =
        c_out·f(x; W_enc·c_in/c_out, b/c_out), so W_enc (and W_skip) take the ratio c_in/c_out and
        every tensor in input units (biases, thresholds) is divided by c_out; decoder rows keep their
        norm and feature activations come out in output units. With c_in = c_out (an SAE) only the
        biases and thresholds change (``fold_input_scale``).
        """
        for scale in (input_scale, output_scale):
            if not math.isfinite(scale) or scale <= 0:
                raise InvalidInput(f"input scale must be a positive finite number, got {scale}")
        tensors = self.export_tensors()
        for name in self.scaled_tensor_names:
            tensors[name] = tensors[name] / output_scale
        if input_scale != output_scale:
            for name in ("W_enc", "W_skip"):
                if name in tensors:
                    tensors[name] = tensors[name] * (input_scale / output_scale)
        self.load_export_tensors(tensors)

    @torch.no_grad()
    def fold_input_offset(self, offset: Tensor) -> None:
        """Make a transcoder trained on ``x - offset`` take ``x``: pre-activations and the skip output shift by constants.

        ``(x - o) @ W_enc + b_enc = x @ W_enc + (b_enc - o @ W_enc)`` and ``(x - o) @ W_skip = x @ W_skip - o @ W_skip``:
        exact for every architecture (``shift_pre_activations`` adds the constant where its encoder adds biases).
        """
        if self.apply_b_dec_to_input:
            raise InvalidInput("fold_input_offset: this SAE subtracts b_dec from its input already; the offset is for transcoders")
        offset = offset.to(self.W_enc.device, self.W_enc.dtype).reshape(-1)
        self.shift_pre_activations(-(offset @ self.W_enc))
        if self.cfg.skip:
            self.b_dec.sub_(offset @ self.W_skip)

    @torch.no_grad()
    def scale_activations(self, factor: float) -> None:
        """Multiply every feature activation by ``factor`` > 0 (encoder weights, biases and thresholds), leaving the decoder alone.

        Exact for the positively homogeneous encoders (ReLU, JumpReLU, TopK, Gated): f(x; aW, ab, aθ) = a·f(x; W, b, θ).
        """
        tensors = self.export_tensors()
        for name in ("W_enc", *[n for n in self.scaled_tensor_names if n != "b_dec"]):
            tensors[name] = tensors[name] * factor
        self.load_export_tensors(tensors)

    @torch.no_grad()
    def shift_pre_activations(self, shift: Tensor) -> None:
        """Add ``shift`` [d_sae] to every pre-activation ``x @ W_enc``'s bias (architectures with other biases override)."""
        self.b_enc.add_(shift)

    @torch.no_grad()
    def fold_input_affine(self, mean: Tensor, std: Tensor | None = None) -> None:
        """Make an SAE trained on ``(x - mean) / std`` take raw ``x`` and reconstruct it in raw units.

        Exact for every architecture whose encoder reads ``x @ W_enc`` (after ``b_dec`` where it is
        subtracted): the pre-activations, hence the codes, are unchanged; the decoder absorbs the
        scale and the mean (x̂ = std·(f W_dec + b_dec) + mean).
        """
        if self.cfg.is_transcoder:
            raise InvalidInput("fold_input_affine: centring folds into SAEs that reconstruct their input, not into transcoders")
        mean = mean.to(self.W_dec.device, self.W_dec.dtype).reshape(-1)
        std = torch.ones_like(mean) if std is None else std.to(mean.device, mean.dtype).reshape(-1)
        if mean.numel() != self.d_in or std.numel() != self.d_in or not bool((std > 0).all()):
            raise InvalidInput(f"fold_input_affine: mean and std need {self.d_in} entries with std > 0")
        if not self.apply_b_dec_to_input:
            self.b_enc.sub_((mean / std) @ self.W_enc)
        self.W_enc.div_(std[:, None])
        self.b_dec.copy_(std * self.b_dec + mean)
        self.W_dec.mul_(std[None, :])

    def copy(self) -> SparseAutoencoder:
        return copy.deepcopy(self)

    def extra_repr(self) -> str:
        if self.cfg.is_transcoder:
            return f"d_in={self.d_in}, d_sae={self.d_sae}, d_out={self.d_out}, target={self.cfg.target!r}, skip={self.cfg.skip}"
        return f"d_in={self.d_in}, d_sae={self.d_sae}"
