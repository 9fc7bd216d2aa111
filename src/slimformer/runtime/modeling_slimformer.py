"""Runtime modules of a slimformer-compressed model.

This file is self-contained on purpose: it depends only on ``torch`` (and, for
loading, ``transformers``) and its sibling ``plan_schema.py`` (standard library
only), so the two can be copied next to a saved model and used through
``trust_remote_code`` by people who do not have slimformer installed.
slimformer itself imports its runtime modules from here, so there is a single
source of truth for how a compressed block computes.

A compressed decoder block keeps the Hugging Face attention / MLP modules of the
base architecture (with narrower weights) and replaces the block's own forward:

    sequential (Llama, OPT, Qwen, Mistral):
        h   = x  @ S_attn + Attn(norm_a(x))          # x: [b, t, d_in],  h: [b, t, d_mid]
        out = h  @ S_mlp  + MLP(norm_m(h))           # out: [b, t, d_out]
    parallel (Phi-2):
        out = x @ S + Attn(norm(x)) + MLP(norm(x))   # x: [b, t, d_in], out: [b, t, d_out]

``S_*`` are the residual shortcut matrices (``None`` means identity) needed when
the residual stream is expressed in different orthogonal bases before and after
a sublayer.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import nn

# The config schema (standard library only) is a sibling file, copied next to every saved
# model with this one; transformers' remote-code loader copies relatively imported files.
from .plan_schema import (  # noqa: F401  (re-exported: slimformer imports them from here)
    CHANNEL_SETS,
    SUPPORTED_FORMAT_VERSIONS,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
    SlimformerFormatError,
    check_weights_sha256,
    read_config_json,
    validate_plan,
    validate_section,
)

ACTIVATIONS = {
    "relu": nn.functional.relu,
    "gelu": nn.functional.gelu,
    "gelu_new": lambda x: nn.functional.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: nn.functional.gelu(x, approximate="tanh"),
    "silu": nn.functional.silu,
}


class SlimRMSNorm(nn.Module):
    """Weightless RMS normalisation of a (possibly sliced) residual stream.

    ``y = x / sqrt(sum(x**2) / full_width + eps)``: the sum of squares is divided by
    the *original* model width so a stream whose small principal components were
    deleted keeps its scale. The norm's learned scale/bias live in the next linears.

    Shapes: x ``[..., width]`` -> ``[..., width]``.
    """

    def __init__(self, width: int, full_width: int, eps: float) -> None:
        super().__init__()
        self.width = int(width)
        self.full_width = int(full_width)
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        xf = x.float()
        ms = xf.pow(2).sum(-1, keepdim=True) / self.full_width
        return (xf * torch.rsqrt(ms + self.eps)).to(dtype)

    def extra_repr(self) -> str:
        return f"width={self.width}, full_width={self.full_width}, eps={self.eps}"


class SlimRMSNormProject(SlimRMSNorm):
    """A :class:`SlimRMSNorm` followed by a bias-free linear map (format 3, plan ``head_proj``).

    Keep-tied SliceGPT puts it in place of the final norm: the stream arrives in the last
    residual basis ``QL`` (width ``width``), the tied head reads the embedding basis ``Q0``
    (width ``out_width``), and ``proj.weight = M = Q0^T diag(g) QL: [out_width, width]``
    carries the final norm's scale ``g`` between the two.

    Shapes: x ``[..., width]`` -> ``[..., out_width]``.
    """

    def __init__(self, width: int, full_width: int, eps: float, out_width: int, dtype: torch.dtype | None = None,
                 device: Any = None) -> None:
        super().__init__(width, full_width, eps)
        self.proj = nn.Linear(int(width), int(out_width), bias=False, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(super().forward(x))  # [..., width] -> [..., out_width]


def make_shortcut(d_in: int, d_out: int, dtype: torch.dtype | None = None, device: Any = None) -> nn.Linear:
    """A bias-free linear map ``[.., d_in] -> [.., d_out]`` used as a residual shortcut."""
    return nn.Linear(d_in, d_out, bias=False, dtype=dtype, device=device)


class SlimBlock(nn.Module):
    """A decoder block whose residual stream may change width/basis between sublayers.

    The one place the block's wiring is written: the saved runtime, the calibration passes
    (:mod:`slimformer.calib`) and MoDeGPT's compressor all call the sublayers through
    :meth:`attn_in` / :meth:`attn_out` / :meth:`mlp_in` / :meth:`mlp_out` (or the whole
    :meth:`attn_branch` / :meth:`mlp_branch`), so sequential, parallel and sandwich blocks
    compute the same thing everywhere::

        sequential: h = S_a(x) + attn_out(Attn(attn_in(x)));  y = S_m(h) + mlp_out(MLP(mlp_in(h)))
        parallel:   y = S_a(x) + attn_out(Attn(n)) + mlp_out(MLP(n)),  n = attn_in(x)

    with ``attn_out(a) = out_scale * post_norm(a)`` (no post-norm / scale 1 where the family has none).

    Args:
        layout: names of the submodules, as in the base Hugging Face block, e.g.
            ``{"attn_norm": "input_layernorm", "attn": "self_attn",
            "mlp_norm": "post_attention_layernorm", "mlp": "mlp"}``; for models
            without an MLP module (OPT) ``"mlp": None, "fc_in": "fc1",
            "fc_out": "fc2", "act": "relu"``. ``mlp_norm`` is ``None`` for a
            parallel block. Optional: ``attn_post_norm`` / ``mlp_post_norm`` (Gemma 2/3's
            sublayer-output norms) and ``out_scale`` (Granite's residual multiplier).
        modules: the submodules named in ``layout``.
        attn_shortcut: optional map of the residual around attention
            (``[d_in] -> [d_mid]``); for parallel blocks the only shortcut.
        mlp_shortcut: optional map of the residual around the MLP
            (``[d_mid] -> [d_out]``), sequential blocks only.
    """

    def __init__(
        self,
        layout: dict[str, Any],
        modules: dict[str, nn.Module],
        attn_shortcut: nn.Linear | None = None,
        mlp_shortcut: nn.Linear | None = None,
    ) -> None:
        super().__init__()
        self.layout = dict(layout)
        self.parallel = bool(layout.get("parallel", layout.get("mlp_norm") is None))
        for name, module in modules.items():
            setattr(self, name, module)
        self.attn_shortcut = attn_shortcut
        self.mlp_shortcut = mlp_shortcut
        if self.parallel and mlp_shortcut is not None:
            raise ValueError("a parallel block has a single shortcut (attn_shortcut)")
        act = layout.get("act")
        self._act = ACTIVATIONS[act] if act else None
        self._scale = float(layout.get("out_scale", 1.0))

    def _mlp(self, h: torch.Tensor) -> torch.Tensor:
        lay = self.layout
        if lay.get("mlp"):
            return getattr(self, lay["mlp"])(h)
        return getattr(self, lay["fc_out"])(self._act(getattr(self, lay["fc_in"])(h)))

    def _attn(self, h: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        out = getattr(self, self.layout["attn"])(hidden_states=h, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    def _out(self, y: torch.Tensor, post_norm: str | None) -> torch.Tensor:
        if post_norm is not None:
            y = getattr(self, post_norm)(y)
        return y if self._scale == 1.0 else y * self._scale

    def _norm(self, name: str | None, x: torch.Tensor) -> torch.Tensor:
        return x if name is None else getattr(self, name)(x)

    def attn_in(self, x: torch.Tensor) -> torch.Tensor:
        """What the attention reads: ``attn_norm(x)``, ``[.., d_in]`` (``x`` itself without a pre-norm)."""
        return self._norm(self.layout["attn_norm"], x)

    def mlp_in(self, h: torch.Tensor) -> torch.Tensor:
        """What the MLP reads: ``mlp_norm(h)``; a parallel block with one norm: ``attn_norm(h)``."""
        lay = self.layout
        return self._norm(lay["attn_norm"] if self.parallel and lay.get("mlp_norm") is None else lay["mlp_norm"], h)

    def attn_out(self, a: torch.Tensor) -> torch.Tensor:
        """The attention output ``a`` (o_proj's output) as it joins the residual."""
        return self._out(a, self.layout.get("attn_post_norm"))

    def mlp_out(self, m: torch.Tensor) -> torch.Tensor:
        """The MLP output ``m`` (down_proj's output) as it joins the residual."""
        return self._out(m, self.layout.get("mlp_post_norm"))

    def attn_branch(self, x: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        """``attn_out(Attn(attn_in(x)))``: the attention's contribution to the residual."""
        return self.attn_out(self._attn(self.attn_in(x), kwargs))

    def mlp_branch(self, h: torch.Tensor) -> torch.Tensor:
        """``mlp_out(MLP(mlp_in(h)))``: the MLP's contribution to the residual."""
        return self.mlp_out(self._mlp(self.mlp_in(h)))

    def parallel_branches(self, x: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        """Parallel blocks: ``attn_out(Attn(n)) + mlp_out(MLP(n))`` with ``n = attn_in(x)``."""
        n = self.attn_in(x)
        m = n if self.layout.get("mlp_norm") is None else self.mlp_in(x)
        return self.attn_out(self._attn(n, kwargs)) + self.mlp_out(self._mlp(m))

    @staticmethod
    def _shortcut(x: torch.Tensor, shortcut: nn.Linear | None) -> torch.Tensor:
        return x if shortcut is None else shortcut(x)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        # hidden_states: [batch, seq, d_in]
        if args:  # GPT-2 passes some block arguments by position: named by the layout
            names = self.layout.get("positional") or []
            if len(args) > len(names):
                raise TypeError("SlimBlock expects keyword arguments after hidden_states")
            kwargs = {**dict(zip(names, args)), **kwargs}
        if self.parallel:  # out: [batch, seq, d_out]
            return self._output(self._shortcut(hidden_states, self.attn_shortcut)
                                + self.parallel_branches(hidden_states, kwargs))
        mid = self._shortcut(hidden_states, self.attn_shortcut) + self.attn_branch(hidden_states, kwargs)  # [b, s, d_mid]
        return self._output(self._shortcut(mid, self.mlp_shortcut) + self.mlp_branch(mid))  # [batch, seq, d_out]

    def _output(self, out: torch.Tensor) -> Any:
        """Falcon's model reads ``block(...)[0]``: a one-tuple there, the tensor everywhere else."""
        return (out,) if self.layout.get("tuple_output") else out


# ----------------------------------------------------------------------------------
# Attention with per-layer head counts and a value head dim below the q/k head dim.
#
# The Hugging Face attention code of every family reshapes q, k *and* v with one
# ``head_dim``. A block whose value heads keep only ``v_head_dim < head_dim``
# channels (FASP / baselines prune v rows with the matching o columns) therefore
# runs the installed transformers' own attention unchanged, with two thin linears:
#
#     v_proj: [.., d] -> [.., n_kv * v_head_dim] -> zero-pad each head -> [.., n_kv * head_dim]
#     o_proj: [.., n_q * head_dim] -> keep the first v_head_dim of each head -> [.., n_q * v_head_dim] -> [.., d]
#
# Kept channels sit first in each head (pruning reorders them), so no index sets are
# stored. The result is exact: padded value channels are zero, so attention writes
# zeros there and o_proj never reads them. Parameters and the v/o matmuls shrink; the
# attention-weights x V product and the v part of the KV cache stay at head_dim.
# Fewer heads need no wrapper: q/k/v simply have fewer rows (whole GQA groups go, so
# the q-per-kv ratio is unchanged); attention modules that store their head count
# (OPT's ``num_heads``) get it set per layer.
# ----------------------------------------------------------------------------------

#: attributes of HF attention modules that hold a layer's query-head count
HEAD_COUNT_ATTRS = ("num_heads",)


class HeadPadOutLinear(nn.Linear):
    """Linear whose output heads of ``kept_dim`` channels are zero-padded to ``head_dim``.

    Weight ``[n_heads * kept_dim, in]``; forward ``x: [.., in] -> [.., n_heads * head_dim]``.
    The state-dict keys are those of a plain ``nn.Linear``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, head_dim: int, kept_dim: int,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if out_features % kept_dim:
            raise ValueError(f"{out_features} output channels are not whole heads of {kept_dim}")
        self.head_dim, self.kept_dim = int(head_dim), int(kept_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)  # [.., n_heads * kept_dim]
        y = y.view(*y.shape[:-1], -1, self.kept_dim)  # [.., n_heads, kept_dim]
        y = nn.functional.pad(y, (0, self.head_dim - self.kept_dim))  # [.., n_heads, head_dim]
        return y.flatten(-2)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, head_dim={self.head_dim}, kept_dim={self.kept_dim}"


class HeadSliceInLinear(nn.Linear):
    """Linear reading only the first ``kept_dim`` channels of each ``head_dim``-wide input head.

    Weight ``[out, n_heads * kept_dim]``; forward ``x: [.., n_heads * head_dim] -> [.., out]``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, head_dim: int, kept_dim: int,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if in_features % kept_dim:
            raise ValueError(f"{in_features} input channels are not whole heads of {kept_dim}")
        self.head_dim, self.kept_dim = int(head_dim), int(kept_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(*x.shape[:-1], -1, self.head_dim)[..., : self.kept_dim]  # [.., n_heads, kept_dim]
        return super().forward(x.flatten(-2))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, head_dim={self.head_dim}, kept_dim={self.kept_dim}"


class HeadScatterOutLinear(nn.Linear):
    """Linear whose heads keep ``k`` of ``head_dim`` channels at fixed positions (MoDeGPT q/k).

    Weight ``[n_heads * k, in]``; forward ``x: [.., in] -> [.., n_heads * head_dim]`` with
    head ``h``'s outputs written to channels ``index[h]`` and zeros elsewhere. Positions
    (not "first k") matter because RoPE rotates channel ``j`` with ``j + r/2`` at a
    frequency set by ``j``; with q and k of a head scattered to the same positions, every
    query-key product only sums the kept channels, exactly. ``index: [n_heads, k]`` is a
    non-persistent buffer (the plan stores it), so the state-dict keys are a plain Linear's.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, head_dim: int, index: Any,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        idx = torch.as_tensor(index, dtype=torch.long)
        if idx.dim() != 2 or idx.numel() != out_features or int(idx.max()) >= head_dim or int(idx.min()) < 0:
            raise ValueError(f"index {tuple(idx.shape)} does not describe {out_features} outputs in heads of {head_dim}")
        self.head_dim, self.kept_dim = int(head_dim), int(idx.shape[1])
        self.register_buffer("index", idx, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)  # [.., n_heads * k]
        y = y.view(*y.shape[:-1], self.index.shape[0], self.kept_dim)  # [.., n_heads, k]
        out = y.new_zeros(*y.shape[:-1], self.head_dim)  # [.., n_heads, head_dim]
        out.scatter_(-1, self.index.to(y.device).expand_as(y), y)
        return out.flatten(-2)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, head_dim={self.head_dim}, kept_dim={self.kept_dim}"


def set_qk_dims(attn: nn.Module, q_path: str, k_path: str, head_dim: int, kv_index: Any, n_rep: int) -> None:
    """Make q/k of one attention module scatter their kept channels (``kv_index: [n_kv, k]``,
    one row per kv head; its ``n_rep`` query heads use the same positions)."""
    kv = torch.as_tensor(kv_index, dtype=torch.long)
    for path, idx in ((q_path, kv.repeat_interleave(n_rep, dim=0)), (k_path, kv)):
        lin = module_at(attn, path)
        new = HeadScatterOutLinear(lin.in_features, lin.out_features, lin.bias is not None, head_dim, idx,
                                   device=lin.weight.device, dtype=lin.weight.dtype)
        new.weight = lin.weight
        new.bias = lin.bias
        set_module_at(attn, path, new)


def head_wrapped(lin: nn.Linear, cls: type, head_dim: int, kept_dim: int) -> nn.Linear:
    """``lin`` as ``cls`` (HeadPadOutLinear / HeadSliceInLinear), sharing its parameters.

    ``kept_dim == head_dim`` returns a plain ``nn.Linear`` (no wrapper needed).
    """
    target = nn.Linear if kept_dim == head_dim else cls
    if type(lin) is target and getattr(lin, "kept_dim", kept_dim) == kept_dim:
        return lin
    if target is nn.Linear:
        new = nn.Linear(lin.in_features, lin.out_features, bias=lin.bias is not None, device="meta")
    else:
        new = cls(lin.in_features, lin.out_features, lin.bias is not None, head_dim, kept_dim, device="meta")
    new.weight = lin.weight
    new.bias = lin.bias
    return new


def set_attention_heads(attn: nn.Module, v_path: str, o_path: str, n_heads: int, head_dim: int,
                        v_head_dim: int) -> None:
    """Give one attention module its head count and value head dim (paths relative to ``attn``)."""
    attn_heads_before = int(getattr(attn, "num_heads", n_heads))
    for name in HEAD_COUNT_ATTRS:
        if hasattr(attn, name):
            setattr(attn, name, int(n_heads))
    if isinstance(getattr(attn, "split_size", None), int):  # GPT-2 splits its fused qkv output by it
        attn.split_size = int(n_heads) * int(getattr(attn, "head_dim", head_dim))
    groups = getattr(attn, "num_key_value_groups", None)  # whole GQA groups go: the ratio is unchanged
    if isinstance(getattr(attn, "num_kv_heads", None), int):  # Falcon: the q-per-kv ratio, before n_heads is set
        ratio = getattr(attn, "_slim_kv_ratio", None) or max(1, attn_heads_before // max(1, attn.num_kv_heads))
        attn._slim_kv_ratio = ratio
        attn.num_kv_heads = max(1, int(n_heads) // ratio)
    if isinstance(getattr(attn, "num_key_value_heads", None), int) and isinstance(groups, int) and groups > 0:
        attn.num_key_value_heads = int(n_heads) // groups  # (StableLM reshapes k/v with it)
    cfg = getattr(attn, "config", None)  # Phi-3 splits its fused qkv with config.num_attention_heads:
    if cfg is not None and getattr(cfg, "num_attention_heads", n_heads) != n_heads and isinstance(groups, int):
        cfg = copy.copy(cfg)  # this layer's own shallow copy (the model's config is unchanged)
        cfg.num_attention_heads = int(n_heads)
        if hasattr(cfg, "num_key_value_heads"):
            cfg.num_key_value_heads = int(n_heads) // groups
        attn.config = cfg
    set_module_at(attn, v_path, head_wrapped(module_at(attn, v_path), HeadPadOutLinear, head_dim, v_head_dim))
    set_module_at(attn, o_path, head_wrapped(module_at(attn, o_path), HeadSliceInLinear, head_dim, v_head_dim))


def attn_relative(path: str, attn: str) -> str:
    """Path of a projection relative to the attention module (``self_attn.v_proj`` -> ``v_proj``)."""
    if not path.startswith(attn + "."):
        raise SlimformerFormatError(f"projection {path} is not inside the attention module {attn}")
    return path[len(attn) + 1:]


def apply_head_shapes(model: nn.Module, plan: dict[str, Any]) -> None:
    """Per-layer head counts and value head dims from the plan (blocks without them are unchanged)."""
    paths, attn_name = plan["paths"], plan["layout"]["attn"]
    layers = module_at(model, paths["layers"])
    for i, bp in enumerate(plan["blocks"]):
        if bp.get("n_heads") is None:
            continue
        attn = module_at(layers[i], attn_name)
        set_attention_heads(attn, attn_relative(paths["v"], attn_name), attn_relative(paths["o"], attn_name),
                            bp["n_heads"], bp["head_dim"], bp["v_head_dim"])
        if bp.get("qk_index") is not None:
            set_qk_dims(attn, attn_relative(paths["q"], attn_name), attn_relative(paths["k"], attn_name),
                        bp["head_dim"], bp["qk_index"], bp["n_heads"] // bp["n_kv_heads"])


# ----------------------------------------------------------------------------------
# Fused projections (Phi-3's qkv_proj and gate_up_proj) kept as their parts.
#
# A fused linear is a stack of independent linears reading the same input. Methods
# prune and rotate q, k, v (or gate, up) separately, so slimformer holds the fused
# module as a FusedLinear whose children are the parts; its forward concatenates their
# outputs, which is exactly what the family's own forward splits again. A plain save
# writes the original fused tensors back (slimformer.io.format); a remote-code save
# keeps the parts, and the loader rebuilds the FusedLinear from the plan's ``unfused``.
# ----------------------------------------------------------------------------------


class FusedLinear(nn.Module):
    """``x: [.., in] -> cat([part(x) for part in parts], -1)``; the parts are child modules.

    With ``head_dim`` the fused rows are grouped per head or kv group (GPT-NeoX's ``query_key_value``:
    head 0's q, k, v rows, then head 1's, ...; Falcon-40B's: group 0's q heads, k, v, then group 1's):
    each part's output is split into the groups (as many as the last part has ``head_dim`` rows)
    and the parts are concatenated group by group.
    """

    def __init__(self, parts: dict[str, nn.Module], head_dim: int | None = None) -> None:
        super().__init__()
        self.part_names = tuple(parts)
        self.head_dim = head_dim
        for name, part in parts.items():
            setattr(self, name, part)

    @property
    def parts(self) -> list[nn.Module]:
        return [getattr(self, n) for n in self.part_names]

    @property
    def in_features(self) -> int:
        return self.parts[0].in_features

    @property
    def out_features(self) -> int:
        return sum(p.out_features for p in self.parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [p(x) for p in self.parts]
        if self.head_dim is None:
            return torch.cat(outs, dim=-1)
        groups = outs[-1].shape[-1] // self.head_dim  # the last part (v) has head_dim rows per group
        return torch.cat([o.unflatten(-1, (groups, -1)) for o in outs], dim=-1).flatten(-2)

    def extra_repr(self) -> str:
        return f"parts={','.join(self.part_names)}" + (f", per_head={self.head_dim}" if self.head_dim else "")


def part_rows(sizes: list[int], head_dim: int | None = None) -> list[torch.Tensor]:
    """Row indices of each part in the fused weight: consecutive blocks, or (``head_dim``: rows grouped
    per head or kv group, ``sizes[-1] // head_dim`` groups) each part's rows of every group."""
    if head_dim is None:
        starts = [sum(sizes[:j]) for j in range(len(sizes))]
        return [torch.arange(a, a + n) for a, n in zip(starts, sizes)]
    heads = sizes[-1] // head_dim
    per_head = [n // heads for n in sizes]
    chunk = sum(per_head)
    offs = [sum(per_head[:j]) for j in range(len(sizes))]
    return [(torch.arange(heads)[:, None] * chunk + o + torch.arange(w)[None, :]).reshape(-1)
            for o, w in zip(offs, per_head)]


def split_linear(root: nn.Module, path: str, parts: list[str], sizes: list[int],
                 head_dim: int | None = None) -> FusedLinear:
    """Replace the linear at ``path`` by a :class:`FusedLinear` of ``parts`` with ``sizes`` output rows
    (``head_dim``: rows grouped per head); weights and biases copied, only shaped on meta."""
    lin = module_at(root, path)
    if isinstance(lin, FusedLinear):
        return lin
    if sum(sizes) != lin.out_features:
        raise SlimformerFormatError(f"{path}: parts {parts} of sizes {sizes} do not add up to its "
                                    f"{lin.out_features} output rows")
    new = {}
    for name, size, rows in zip(parts, sizes, part_rows(sizes, head_dim)):
        part = nn.Linear(lin.in_features, size, bias=lin.bias is not None, device=lin.weight.device,
                         dtype=lin.weight.dtype)
        if lin.weight.device.type != "meta":
            with torch.no_grad():
                part.weight.copy_(lin.weight[rows.to(lin.weight.device)])
                if lin.bias is not None:
                    part.bias.copy_(lin.bias[rows.to(lin.bias.device)])
        new[name] = part
    fused = FusedLinear(new, head_dim)
    set_module_at(root, path, fused)
    return fused


class ExpertMLP(nn.Module):
    """One expert of a mixture-of-experts block: ``down(act(gate(x)) * up(x))``."""

    def __init__(self, gate_proj: nn.Linear, up_proj: nn.Linear, down_proj: nn.Linear, act: nn.Module) -> None:
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = gate_proj, up_proj, down_proj
        self._act = (act,)  # shared with the other experts; not a child (no state-dict entry)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self._act[0](self.gate_proj(x)) * self.up_proj(x))


class ExpertList(nn.Module):
    """The experts of a MoE block as separate :class:`ExpertMLP` modules (children ``"0"``, ``"1"``, ...).

    Same call as the Hugging Face experts module that stores them as 3-D tensors (Mixtral,
    Qwen2/3-MoE, OLMoE): ``forward(hidden_states [N, d_in], top_k_index [N, k], top_k_weights
    [N, k]) -> [N, d_out]``, each token's output the routing-weighted sum of its experts'. Held
    as separate linears, the experts can be rotated, sliced and pruned like any MLP.
    """

    def __init__(self, experts: list[ExpertMLP]) -> None:
        super().__init__()
        self.num_experts = len(experts)
        for i, expert in enumerate(experts):
            self.add_module(str(i), expert)

    def expert(self, i: int) -> ExpertMLP:
        return getattr(self, str(i))

    def __getitem__(self, i: int) -> ExpertMLP:  # dotted paths ``mlp.experts.3.down_proj``
        return self.expert(int(i))

    def __len__(self) -> int:
        return self.num_experts

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        out_width = self.expert(0).down_proj.out_features
        out = hidden_states.new_zeros(hidden_states.shape[0], out_width)
        for e in torch.unique(top_k_index).tolist():
            if not 0 <= e < self.num_experts:
                continue
            token_idx, slot = torch.where(top_k_index == e)
            y = self.expert(e)(hidden_states[token_idx]) * top_k_weights[token_idx, slot, None]
            out.index_add_(0, token_idx, y.to(out.dtype))
        return out


class SparseMoE(nn.Module):
    """A mixture-of-experts MLP whose output width may differ from its input width.

    ``y = experts(x, top-k of gate(x)) [+ sigmoid(shared_expert_gate(x)) * shared_expert(x)]`` for
    ``x: [b, t, d_in] -> y: [b, t, d_out]``: the routing of Mixtral, Qwen2/3-MoE and OLMoE (whose own
    blocks reshape the output to the input's width, which a sliced residual stream does not keep).
    The children keep the family's names (``gate``, ``experts``, ``shared_expert``,
    ``shared_expert_gate``), so the checkpoint keys of the router and shared expert are unchanged.
    """

    def __init__(self, gate: nn.Module, experts: ExpertList, shared_expert: nn.Module | None = None,
                 shared_expert_gate: nn.Module | None = None) -> None:
        super().__init__()
        self.gate, self.experts = gate, experts
        self.shared_expert, self.shared_expert_gate = shared_expert, shared_expert_gate

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        lead = hidden_states.shape[:-1]
        x = hidden_states.reshape(-1, hidden_states.shape[-1])  # [N, d_in]
        _, weights, index = self.gate(x)
        y = self.experts(x, index, weights)  # [N, d_out]
        if self.shared_expert is not None:
            shared = self.shared_expert(x)
            if self.shared_expert_gate is not None:
                shared = torch.sigmoid(self.shared_expert_gate(x)) * shared
            y = y + shared
        return y.reshape(*lead, y.shape[-1])


def split_experts(root: nn.Module, path: str, count: int | None = None) -> SparseMoE:
    """Replace the MoE block at ``path`` (router ``gate``; ``experts`` holding ``gate_up_proj: [E, 2I, d]``,
    ``down_proj: [E, d, I]``, ``act_fn``; optional ``shared_expert`` / ``shared_expert_gate``) by a
    :class:`SparseMoE` of the same function with an :class:`ExpertList` (weights copied; shaped on meta)."""
    block = module_at(root, path)
    if isinstance(block, SparseMoE):
        return block
    old = block.experts
    gate_up, down = old.gate_up_proj, old.down_proj
    n = gate_up.shape[0] if count is None else int(count)
    inter, d = gate_up.shape[1] // 2, gate_up.shape[2]
    experts = []
    for e in range(n):
        lins = [nn.Linear(d, inter, bias=False, device=gate_up.device, dtype=gate_up.dtype) for _ in range(2)]
        lins.append(nn.Linear(inter, down.shape[1], bias=False, device=down.device, dtype=down.dtype))
        if gate_up.device.type != "meta":
            with torch.no_grad():
                lins[0].weight.copy_(gate_up[e, :inter])
                lins[1].weight.copy_(gate_up[e, inter:])
                lins[2].weight.copy_(down[e])
        experts.append(ExpertMLP(*lins, act=old.act_fn))
    new = SparseMoE(block.gate, ExpertList(experts), getattr(block, "shared_expert", None),
                    getattr(block, "shared_expert_gate", None))
    set_module_at(root, path, new)
    return new


def set_router_width(router: nn.Module) -> None:
    """A router that reshapes its input with ``hidden_dim`` reads the width of its weight ``[E, d]``."""
    w = getattr(router, "weight", None)
    if hasattr(router, "hidden_dim") and isinstance(w, torch.Tensor):
        router.hidden_dim = int(w.shape[-1])


def as_plain_linear(root: nn.Module, path: str) -> nn.Linear:
    """Replace a subclass of ``nn.Linear`` with its own forward (Falcon's ``FalconLinear``) by a plain
    ``nn.Linear`` sharing its parameters (the same map; methods and wrappers expect plain linears)."""
    lin = module_at(root, path)
    if type(lin) is nn.Linear or not isinstance(lin, nn.Linear):
        return lin
    new = nn.Linear(lin.in_features, lin.out_features, bias=lin.bias is not None, device="meta")
    new.weight, new.bias = lin.weight, lin.bias
    set_module_at(root, path, new)
    return new


def conv1d_to_linear(root: nn.Module, path: str) -> nn.Linear:
    """Replace GPT-2's ``Conv1D`` at ``path`` (``weight: [in, out]``, ``y = x W + b``) by the equal
    ``nn.Linear`` (``weight: [out, in]``); only shaped on the meta device."""
    conv = module_at(root, path)
    if isinstance(conv, nn.Linear):
        return conv
    w = conv.weight  # [in, out]
    lin = nn.Linear(w.shape[0], w.shape[1], bias=getattr(conv, "bias", None) is not None, device=w.device,
                    dtype=w.dtype)
    if w.device.type != "meta":
        with torch.no_grad():
            lin.weight.copy_(w.T)
            if lin.bias is not None:
                lin.bias.copy_(conv.bias)
    set_module_at(root, path, lin)
    return lin


def apply_unfused(model: nn.Module, plan: dict[str, Any]) -> None:
    """Rebuild the plan's fused projections as FusedLinear and its 3-D experts as ExpertList
    (shapes follow the checkpoint later)."""
    specs = plan.get("unfused") or []
    conv1d = plan.get("conv1d") or []
    if not specs and not conv1d:
        return
    for layer in module_at(model, plan["paths"]["layers"]):
        for path in conv1d:  # GPT-2: the checkpoint holds nn.Linear orientation
            conv1d_to_linear(layer, path)
        for spec in specs:
            if spec.get("experts") is not None:
                split_experts(layer, spec["path"], spec["experts"])
                continue
            lin = module_at(layer, spec["path"])
            n = len(spec["parts"])
            sizes = [lin.out_features // n] * (n - 1)
            split_linear(layer, spec["path"], spec["parts"], sizes + [lin.out_features - sum(sizes)],
                         spec.get("head_dim"))


# ----------------------------------------------------------------------------------
# Residual channel subsets (DISP-LLM: "dimension-independent" pruning).
#
# The residual stream keeps its full width d. A sublayer reads only a subset of its
# channels and writes only a subset, with the unchanged Hugging Face block:
#
#     q/k/v, gate/up, fc1:  y = W x[.., in_index] + b          W: [out, |in_index|]
#     o, down, fc2:         y = zeros(d); y[.., out_index] = W x + b   W: [|out_index|, in]
#
# The block's norm still sees (and normalises) the whole stream; the block adds the
# scattered output to the residual as usual. Index sets are sorted, distinct channel
# positions stored in the plan (non-persistent buffers here, so the state-dict keys
# are a plain Linear's). An empty set is allowed and exact: the reader then sees no
# input (its output is its bias), the writer adds nothing.
# ----------------------------------------------------------------------------------


def channel_index(index: Any, count: int, width: int, what: str = "index") -> torch.Tensor:
    """``index`` as a ``long`` tensor ``[count]`` of increasing channel positions in ``[0, width)``.

    Raises ValueError naming ``what`` when it is not.
    """
    idx = torch.as_tensor(index, dtype=torch.long).detach().to("cpu")
    if idx.dim() != 1 or idx.numel() != count:
        raise ValueError(f"{what} has shape {tuple(idx.shape)}, expected [{count}] (one entry per kept channel)")
    if count and (int(idx.min()) < 0 or int(idx.max()) >= width or bool((idx[1:] <= idx[:-1]).any())):
        raise ValueError(f"{what} must list increasing, distinct channel positions in [0, {width})")
    return idx


def _index_on(idx: torch.Tensor, device: Any) -> torch.Tensor:
    """Index buffers stay real (on CPU) when the parameters are created on meta."""
    return idx if device is None or torch.device(device).type == "meta" else idx.to(device)


def _init_channel_linear(lin: nn.Linear, in_features: int, out_features: int, bias: bool, residual_width: int,
                         name: str, index: Any, size: int, device: Any, dtype: Any) -> None:
    """Shared constructor of the channel-set linears: the Linear itself plus the index buffer ``name``."""
    with warnings.catch_warnings():  # an empty channel set makes a 0-element weight (allowed, exact)
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        nn.Linear.__init__(lin, in_features, out_features, bias=bias, device=device, dtype=dtype)
    lin.residual_width = int(residual_width)
    idx = channel_index(index, size, lin.residual_width, name)
    lin.register_buffer(name, _index_on(idx, device), persistent=False)


class GatherInLinear(nn.Linear):
    """Linear that reads only the residual channels ``in_index`` of its full-width input.

    Weight ``[out, k]`` (``k = len(in_index)``); forward
    ``x: [.., residual_width] -> [.., out] = x[.., in_index] @ W^T + b``.
    ``in_index: [k]`` is a non-persistent buffer (the plan stores it).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, residual_width: int, in_index: Any,
                 device: Any = None, dtype: Any = None) -> None:
        _init_channel_linear(self, in_features, out_features, bias, residual_width, "in_index", in_index,
                             in_features, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [.., residual_width] -> gathered [.., k] -> [.., out]
        return nn.functional.linear(x.index_select(-1, self.in_index), self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, residual_width={self.residual_width}"


class ScatterOutLinear(nn.Linear):
    """Linear whose outputs are written to the residual channels ``out_index`` (zeros elsewhere).

    Weight ``[k, in]`` (``k = len(out_index)``); forward ``x: [.., in] -> [.., residual_width]``
    with ``y[.., out_index] = x @ W^T + b``. ``out_index: [k]`` is a non-persistent buffer.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, residual_width: int, out_index: Any,
                 device: Any = None, dtype: Any = None) -> None:
        _init_channel_linear(self, in_features, out_features, bias, residual_width, "out_index", out_index,
                             out_features, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.linear(x, self.weight, self.bias)  # [.., k]
        out = y.new_zeros(*y.shape[:-1], self.residual_width)  # [.., residual_width]
        return out.index_copy_(-1, self.out_index, y)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, residual_width={self.residual_width}"


def channel_wrapped(lin: nn.Linear, residual_width: int, in_index: Any = None, out_index: Any = None) -> nn.Linear:
    """``lin`` as a :class:`GatherInLinear` (``in_index``) or :class:`ScatterOutLinear`
    (``out_index``) sharing its parameters; ``lin`` must be a plain ``nn.Linear`` whose
    weight already has the kept columns / rows."""
    if type(lin) is not nn.Linear:
        raise ValueError(f"residual channel subsets need a plain nn.Linear, found {type(lin).__name__} "
                         "(they cannot be combined with head-shape wrappers)")
    if (in_index is None) == (out_index is None):
        raise ValueError("give exactly one of in_index / out_index")
    dev = lin.weight.device
    if in_index is not None:
        new: nn.Linear = GatherInLinear(lin.in_features, lin.out_features, lin.bias is not None, residual_width,
                                        in_index, device="meta")
        new.in_index = _index_on(new.in_index, dev)
    else:
        new = ScatterOutLinear(lin.in_features, lin.out_features, lin.bias is not None, residual_width, out_index,
                               device="meta")
        new.out_index = _index_on(new.out_index, dev)
    new.weight = lin.weight
    new.bias = lin.bias
    return new


def apply_channel_sets(model: nn.Module, plan: dict[str, Any]) -> None:
    """Wrap the readers/writers of every block whose plan has residual channel subsets."""
    paths, width = plan["paths"], int(plan["full_width"])
    layers = module_at(model, paths["layers"])
    for i, bp in enumerate(plan["blocks"]):
        for field_name, (keys, gather) in CHANNEL_SETS.items():
            index = bp.get(field_name)
            if index is None:
                continue
            for key in keys:
                if not paths.get(key):
                    continue
                lin = module_at(layers[i], paths[key])
                kw = {"in_index": index} if gather else {"out_index": index}
                set_module_at(layers[i], paths[key], channel_wrapped(lin, width, **kw))


# ----------------------------------------------------------------------------------
# Loading a saved compressed model (used by slimformer.load_model *and* by
# AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)).
# ----------------------------------------------------------------------------------

import contextlib
import json
import os

def module_at(root: nn.Module, path: str) -> nn.Module:
    """The submodule at dotted ``path`` (``""`` is ``root``; digits index ModuleLists)."""
    mod = root
    for part in path.split(".") if path else []:
        mod = mod[int(part)] if part.isdigit() else getattr(mod, part)
    return mod


def set_module_at(root: nn.Module, path: str, new: nn.Module) -> None:
    """Replace the submodule at dotted ``path`` by ``new``."""
    parent_path, _, name = path.rpartition(".")
    parent = module_at(root, parent_path)
    if name.isdigit():
        parent[int(name)] = new
    else:
        setattr(parent, name, new)


@contextlib.contextmanager
def _params_on_meta():
    """Create parameters on the meta device (buffers such as rotary tables stay real)."""
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None:
            kwargs = {"requires_grad": param.requires_grad}
            module._parameters[name] = nn.Parameter(module._parameters[name].to("meta"), **kwargs)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def read_header_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, from the safetensors header(s) of a saved directory (no data read)."""
    from safetensors import safe_open

    files = weight_files(path)
    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        try:
            with safe_open(f, framework="pt") as sf:
                for key in sf.keys():
                    shapes[key] = tuple(sf.get_slice(key).get_shape())
        except Exception as exc:  # safetensors raises its own error types
            raise SlimformerFormatError(f"cannot read {f}: {exc} (file truncated or corrupt?)") from exc
    return shapes


def weight_map(path: str) -> dict[str, str]:
    """Tensor name -> safetensors file of a checkpoint directory (single file or sharded with an index)."""
    index = os.path.join(path, WEIGHTS_INDEX_NAME)
    if os.path.exists(index):
        try:
            with open(index) as fh:
                names = json.load(fh)["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise SlimformerFormatError(f"{index} is not a valid safetensors index: {exc}") from exc
        missing = sorted({f for f in names.values() if not os.path.exists(os.path.join(path, f))})
        if missing:
            raise SlimformerFormatError(f"missing weight shard(s) {missing} listed in {index}")
        return {k: os.path.join(path, f) for k, f in names.items()}
    single = os.path.join(path, WEIGHTS_NAME)
    if not os.path.exists(single):
        raise SlimformerFormatError(f"no {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME} in {path}")
    from safetensors import safe_open

    try:
        with safe_open(single, framework="pt") as fh:
            return {k: single for k in fh.keys()}
    except Exception as exc:  # safetensors raises its own error types
        raise SlimformerFormatError(f"cannot read {single}: {exc} (file truncated or corrupt?)") from exc


def weight_files(path: str) -> list[str]:
    """The safetensors files of a saved directory (single file or sharded with an index)."""
    return sorted(set(weight_map(path).values()))


def _resize_to_checkpoint(model: nn.Module, shapes: dict[str, tuple[int, ...]]) -> None:
    """Give every Linear/Embedding the shape (and bias) the checkpoint has (on meta)."""
    for name, mod in list(model.named_modules()):
        prefix = f"{name}." if name else ""
        key = f"{prefix}weight"
        if isinstance(mod, nn.Linear) and key in shapes:
            out_f, in_f = shapes[key]
            has_bias = f"{prefix}bias" in shapes
            if (out_f, in_f) != tuple(mod.weight.shape) or has_bias != (mod.bias is not None):
                set_module_at(model, name, nn.Linear(in_f, out_f, bias=has_bias, device="meta", dtype=mod.weight.dtype))
        elif key in shapes and isinstance(getattr(mod, "weight", None), nn.Parameter) and not isinstance(
                mod, (nn.Embedding, nn.Linear)) and tuple(mod.weight.shape) != tuple(shapes[key]) \
                and mod.weight.dim() == len(shapes[key]) == 2:  # a router's [E, d] weight
            mod.weight = nn.Parameter(torch.empty(*shapes[key], device="meta", dtype=mod.weight.dtype))
            set_router_width(mod)
        elif isinstance(mod, nn.Embedding) and key in shapes:
            num, dim = shapes[key]
            if (num, dim) != tuple(mod.weight.shape):
                mod.weight = nn.Parameter(torch.empty(num, dim, device="meta", dtype=mod.weight.dtype))
                mod.num_embeddings, mod.embedding_dim = num, dim


def apply_plan(model: nn.Module, plan: dict[str, Any], norm_eps: float) -> None:
    """Turn a freshly built base model into the block structure described by ``plan``."""
    paths = plan["paths"]
    d = int(plan["full_width"])
    layout = plan["layout"]
    layers = module_at(model, paths["layers"])
    if len(layers) != len(plan["blocks"]):
        raise SlimformerFormatError(f"plan has {len(plan['blocks'])} blocks but the config builds {len(layers)}")
    apply_unfused(model, plan)
    if not plan.get("fused", True):
        return  # original HF blocks and norms (index pruning): only tensor shapes differ
    for i, bp in enumerate(plan["blocks"]):
        layer = layers[i]
        names = [layout["attn_norm"], layout["attn"]]
        names += [layout["mlp_norm"]] if layout.get("mlp_norm") else []
        names += [layout["mlp"]] if layout.get("mlp") else [layout["fc_in"], layout["fc_out"]]
        modules = {n: module_at(layer, n) for n in names}
        modules[layout["attn_norm"]] = SlimRMSNorm(bp["d_in"], d, norm_eps)
        if layout.get("mlp_norm"):  # (a parallel block's second norm reads the block input)
            modules[layout["mlp_norm"]] = SlimRMSNorm(bp["d_in"] if bp["d_mid"] is None else bp["d_mid"], d, norm_eps)
        after_attn = bp["d_out"] if bp["d_mid"] is None else bp["d_mid"]
        attn_sc = make_shortcut(bp["d_in"], after_attn, device="meta") if bp["attn_shortcut"] else None
        mlp_sc = make_shortcut(bp["d_mid"], bp["d_out"], device="meta") if bp["mlp_shortcut"] else None
        layers[i] = SlimBlock(layout, modules, attn_shortcut=attn_sc, mlp_shortcut=mlp_sc)
    if plan.get("head_proj", False):  # format 3: keep-tied SliceGPT's head-input map
        final: nn.Module = SlimRMSNormProject(plan["head_width"], d, norm_eps, plan["embed_width"], device="meta")
    else:
        final = SlimRMSNorm(plan["head_width"], d, norm_eps)
    set_module_at(model, paths["final_norm"], final)


def _tie_head(model: nn.Module, paths: dict[str, Any]) -> None:
    """Share the input embedding with the LM head (plain models with tied embeddings)."""
    module_at(model, paths["head"]).weight = module_at(model, paths["embed"]).weight


def _load_state_dict(path: str, dtype: torch.dtype | None, device: Any) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in weight_files(path):
        try:
            part = load_file(f, device=str(device) if device is not None else "cpu")
        except Exception as exc:
            raise SlimformerFormatError(f"cannot read {f}: {exc} (file truncated or corrupt?)") from exc
        for k, v in part.items():
            state[k] = v.to(dtype) if dtype is not None and v.is_floating_point() else v
    return state


def slim_section(config: Any) -> dict[str, Any]:
    """The ``"slimformer"`` section of a config object, checked against the schema
    (:func:`plan_schema.validate_section`, without weights)."""
    section = getattr(config, "slimformer", None)
    validate_section(section)
    return section


class SavedCheck:
    """What :func:`check_saved` read: ``config`` (config.json), ``section``, ``shapes`` (tensor
    name -> shape from the safetensors headers), ``files`` (weight file paths) and ``hashed``
    (names of the files whose recorded sha256 was checked; empty when none was recorded)."""

    def __init__(self, config: dict[str, Any], section: dict[str, Any], shapes: dict[str, tuple[int, ...]],
                 files: list[str], hashed: list[str]) -> None:
        self.config, self.section, self.shapes, self.files, self.hashed = config, section, shapes, files, hashed


def check_saved(path: str, check_hashes: bool = True) -> SavedCheck:
    """Everything checkable about a saved directory without building the model, cheapest first:
    config.json, the whole ``"slimformer"`` section against the schema and the base config, the
    safetensors headers against the plan, then (``check_hashes``) the recorded sha256 of every
    weight file. Raises :class:`SlimformerFormatError` (one line) on the first problem."""
    if not os.path.isdir(path):
        raise SlimformerFormatError(f"not a directory: {path}")
    config = read_config_json(path)
    if "slimformer" not in config:
        raise SlimformerFormatError(f"{path}/config.json has no 'slimformer' section: not a slimformer model")
    section = config["slimformer"]
    validate_section(section, base_config=config)  # before reading anything else
    files = weight_files(path)
    shapes = read_header_shapes(path)
    validate_section(section, shapes, config)
    hashed = check_weights_sha256(path, section, files) if check_hashes else []
    return SavedCheck(config, section, shapes, files, hashed)


def causal_lm_class(architecture: str, model_type: str) -> type:
    """The transformers class ``architecture``, only if transformers maps ``model_type`` to it."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    mapped = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    cls = getattr(transformers, architecture, None) if mapped == architecture else None
    if cls is None:
        if mapped is None:
            why = f"transformers {transformers.__version__} knows no causal LM of model_type {model_type!r}"
        elif mapped != architecture:
            why = f"model_type {model_type!r} is served by {mapped}, not {architecture}"
        else:
            why = f"transformers {transformers.__version__} has no {architecture}"
        raise SlimformerFormatError(f"config.json: slimformer.plan names {architecture}: {why}; upgrade "
                                    "transformers, or re-save the model with slimformer")
    return cls


def load_compressed(path: str, config: Any = None, dtype: Any = None, device: Any = None,
                    check_hashes: bool = True) -> nn.Module:
    """Build the compressed model from its plan on the meta device and assign the saved weights.

    Everything :func:`check_saved` checks is checked first, before any model is built.
    Peak memory is about one copy of the weights. ``dtype``: optional torch dtype
    (or its name) to cast floating weights to; ``device``: where to put them;
    ``check_hashes``: compare the weight files with their recorded sha256 (reads them once more).
    """
    import transformers
    from transformers import AutoConfig

    checked = check_saved(path, check_hashes=check_hashes)
    section, shapes = checked.section, checked.shapes
    plan = section["plan"]
    if config is None:
        config = AutoConfig.from_pretrained(path)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    cls = causal_lm_class(plan["architecture"], plan["model_type"])
    with _params_on_meta():
        model = cls(config)
    apply_plan(model, plan, float(plan["norm_eps"]))
    _resize_to_checkpoint(model, shapes)
    apply_head_shapes(model, plan)
    apply_channel_sets(model, plan)  # after the head wrappers: both replace plain Linears
    state = _load_state_dict(path, dtype, device)
    expected = set(model.state_dict().keys())
    tied = bool(plan.get("tied_head", False))
    if tied:
        expected.discard(plan["paths"]["head"] + ".weight")
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing:
        raise SlimformerFormatError(f"tensor {missing[0]} is missing from the checkpoint ({len(missing)} missing)")
    if unexpected:
        raise SlimformerFormatError(f"unexpected tensor {unexpected[0]} in the checkpoint ({len(unexpected)} unexpected)")
    model.load_state_dict(state, strict=not tied, assign=True)
    if tied:
        _tie_head(model, plan["paths"])
    if device is not None:
        model.to(device)  # buffers (rotary tables) follow the weights
    model.eval()
    return model


try:  # the dispatcher class AutoModelForCausalLM resolves through config.auto_map
    from transformers import PreTrainedModel as _PreTrainedModel

    class SlimformerForCausalLM(_PreTrainedModel):
        """Entry point for ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)``.

        It returns an instance of the *base* architecture class (e.g.
        ``LlamaForCausalLM``) whose blocks are :class:`SlimBlock` s, so
        ``generate()`` and every other transformers feature keep working.
        """

        @classmethod
        def from_pretrained(cls, pretrained_model_name_or_path: str, *args: Any, config: Any = None, **kwargs: Any):
            path = str(pretrained_model_name_or_path)
            if not os.path.isdir(path):
                from huggingface_hub import snapshot_download

                path = snapshot_download(path)
            dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
            dtype = None if dtype == "auto" else dtype
            device = kwargs.get("device_map")
            device = device if isinstance(device, (str, torch.device)) and device != "auto" else None
            return load_compressed(path, config=config, dtype=dtype, device=device)

except ImportError:  # pragma: no cover - transformers is required to load through HF
    pass
