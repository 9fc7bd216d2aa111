"""Architecture adapters: a model family described as data.

Methods never reach into ``model.model.layers[i].self_attn.q_proj`` themselves;
they ask an :class:`ArchAdapter` where the embeddings, blocks, norms, head and
the residual readers/writers are. Paths are dotted attribute paths, relative to
the ``*ForCausalLM`` model (model-level paths) or to one decoder block
(block-level paths).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Literal

from torch import nn

from ..runtime.modeling_slimformer import module_at, set_module_at

logger = logging.getLogger("slimformer.arch")


class UnsupportedModelError(ValueError):
    """The model (or a variant of a supported family) cannot be compressed."""


# One implementation of dotted-path access, shared with the self-contained runtime file.
get_module = module_at
set_module = set_module_at


@dataclass(frozen=True)
class ArchAdapter:
    """Where things are in one model family, and how its blocks compute.

    Attributes:
        model_types: ``config.model_type`` values served by this adapter.
        layers: model-level path of the ``nn.ModuleList`` of decoder blocks.
        embed: model-level path of the token embedding.
        final_norm: model-level path of the norm before the head.
        norm_kind: ``"rms"`` (no centring needed) or ``"layer"`` (LayerNorm: the
            writers of the residual are mean-centred during fusion).
        attn_norm / mlp_norm: block-level names of the pre-norms (``mlp_norm=None``
            for a parallel block where one norm feeds attention and MLP; both ``None`` for
            blocks that only normalise sublayer outputs: OLMo-2).
        attn: block-level name of the attention module.
        q, k, v, o: block-level paths of the attention projections.
        up, down: block-level paths of the MLP's first (reading) and last
            (writing) linears; ``gate`` is the optional gated branch.
        mlp: block-level name of the MLP module, or ``None`` when the linears sit
            directly in the block (OPT); then ``act_config_attr`` names the
            config field holding the activation.
        pos_embed: model-level path of learned positional embeddings (OPT).
        head: model-level path of the LM head.
        mlp_width_config_attr: config field holding the MLP width (plain export).
        rope: q/k are rotated by RoPE in HF's ``rotate_half`` layout (channels ``j`` and
            ``j + r/2`` together; ``config.partial_rotary_factor`` gives ``r``);
            False for learned positions (OPT).
        head_norms: q/k carry a per-head norm over the head dim (Qwen3), so q/k head
            dims cannot be cut.
        norm_offset: the norms scale by ``norm_offset + weight`` (Gemma's RMSNorm stores
            ``weight`` as an offset from 1: ``norm_offset=1``); fusion folds the whole scale.
        norm_eps: the epsilon of norms that do not store one (OLMo's weightless LayerNorm
            hard-codes 1e-5); ``None``: read from the module.
        wiring: ``"sequential"`` (``x + Attn(norm_a(x))`` then ``h + MLP(norm_m(h))``) or
            ``"parallel"`` (``x + Attn(norm_a(x)) + MLP(norm_m(x))``: one norm when ``mlp_norm``
            is ``None`` (Phi-2, Cohere), two otherwise (GPT-NeoX)).
        attn_post_norm / mlp_post_norm: block-level names of norms applied to a sublayer's
            *output* before it joins the residual (Gemma 2/3 "sandwich" blocks). The residual
            stream then never passes through a pre-norm alone, so it cannot be rotated:
            methods that rotate or select residual channels refuse such families; methods
            that prune heads / MLP channels inside the blocks run on them.
        residual_multiplier: config field of a scalar multiplying every sublayer output before
            it joins the residual (Granite); fusion folds it into the writers.
        rope_layout: ``"half"`` (HF ``rotate_half``: channels ``j`` and ``j + r/2`` rotate
            together) or ``"interleaved"`` (channels ``2j`` and ``2j + 1``: Cohere, GPT-J).
        unfuse: fused projections as ``(block-level path, part names)``, e.g.
            ``("self_attn.qkv_proj", ("q_proj", "k_proj", "v_proj"))`` (Phi-3): before a method
            runs, each becomes a :class:`~slimformer.runtime.modeling_slimformer.FusedLinear` of
            separate linears (exact: the parts' outputs are concatenated), so q/k/v paths are
            ``self_attn.qkv_proj.q_proj`` etc.; a plain save writes the fused tensors back.
        split_sizes: ``config -> {path: output rows of each part}`` for ``unfuse``.
        conv1d: block-level paths of GPT-2's ``Conv1D`` modules (``weight: [in, out]``); they become
            ``nn.Linear`` before anything else (exact), and a plain save transposes them back.
        tuple_output: the model reads a block's output as ``block(...)[0]`` (Falcon).
        as_linear: block-level paths of ``nn.Linear`` subclasses with their own forward (Falcon's
            ``FalconLinear``), held as plain ``nn.Linear`` while compressing (same parameters).
        specialize: ``config -> adapter`` for families whose layout depends on the config (Falcon's
            decoder variants); :func:`slimformer.arch.get_adapter` applies it after ``validate``.
        same_width_ends: the model reshapes its final hidden states to the embedding width (GPT-2's
            ``view(output_shape)``): residual slicing must give the head input the embedding's width
            (``schedule="uniform"`` with ``slice_head``).
        block_args: names of the arguments the model passes to a decoder block by position after
            ``hidden_states`` (GPT-2: ``cache, attention_mask, encoder_hidden_states``).
        interleaved_qkv: paths of ``unfuse`` whose rows are grouped per head (GPT-NeoX's
            ``query_key_value``: head 0's q, k, v rows, then head 1's, ...).
        qk_norm_over_heads: q and k are normalised over all heads together (OLMo-2's
            ``q_norm`` / ``k_norm`` over ``n_heads * head_dim``): heads cannot be removed exactly.
        experts: block-level path of a mixture-of-experts block's experts module (3-D
            ``gate_up_proj`` / ``down_proj`` tensors: Mixtral, Qwen2/3-MoE, OLMoE); before a method
            runs it becomes an :class:`~slimformer.runtime.modeling_slimformer.ExpertList` of
            separate expert MLPs (exact). ``gate``/``up``/``down`` then name expert 0's linears.
        router: block-level path of the MoE router (``weight: [E, d]`` reads the normalised stream).
        shared_expert / shared_expert_gate: Qwen2-MoE's always-on expert (an MLP with
            ``gate_proj``/``up_proj``/``down_proj``) and its sigmoid gate (a ``[1, d]`` reader);
            ``shared_expert_width_config_attr`` names the config field of its width (plain saves).
        tiny: the family's smallest test configuration: ``{"config_class": "LlamaConfig",
            **kwargs}`` with ``vocab_size``/``hidden_size``/layer count left to the test grid
            (``tests/test_family_grid.py`` builds every registered family from it).
        validate: optional check of the config raising UnsupportedModelError.
    """

    name: str
    model_types: tuple[str, ...]
    layers: str
    embed: str
    final_norm: str
    norm_kind: Literal["rms", "layer"]
    attn_norm: str | None
    mlp_norm: str | None
    attn: str
    q: str
    k: str
    v: str
    o: str
    up: str
    down: str
    gate: str | None = None
    mlp: str | None = "mlp"
    act_config_attr: str | None = None
    mlp_width_config_attr: str = "intermediate_size"
    pos_embed: str | None = None
    head: str = "lm_head"
    rope: bool = True
    head_norms: bool = False
    norm_offset: float = 0.0
    norm_eps: float | None = None
    wiring: Literal["sequential", "parallel"] = "sequential"
    attn_post_norm: str | None = None
    mlp_post_norm: str | None = None
    residual_multiplier: str | None = None
    rope_layout: Literal["half", "interleaved"] = "half"
    qk_norm_over_heads: bool = False
    interleaved_qkv: tuple[str, ...] = ()
    conv1d: tuple[str, ...] = ()
    tuple_output: bool = False
    as_linear: tuple[str, ...] = ()
    specialize: Callable[[Any], "ArchAdapter"] | None = field(default=None, compare=False)
    same_width_ends: bool = False
    block_args: tuple[str, ...] = ()
    unfuse: tuple[tuple[str, tuple[str, ...]], ...] = ()
    experts: str | None = None
    router: str | None = None
    shared_expert: str | None = None
    shared_expert_gate: str | None = None
    shared_expert_width_config_attr: str | None = None
    split_sizes: Callable[[Any], dict[str, tuple[int, ...]]] | None = field(default=None, compare=False)
    tiny: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    validate: Callable[[Any], None] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.wiring == "sequential" and self.mlp_norm is None and self.attn_norm is not None:
            raise ValueError(f"adapter {self.name}: a sequential block with an attention pre-norm needs mlp_norm")
        if self.attn_norm is None and not self.post_norms:
            raise ValueError(f"adapter {self.name}: a block without pre-norms must normalise sublayer outputs")

    # ----- derived, read-only views -------------------------------------------------
    @property
    def parallel(self) -> bool:
        """True when attention and MLP read the same normalised input (Phi-2, Cohere)."""
        return self.wiring == "parallel"

    @property
    def post_norms(self) -> tuple[str, ...]:
        """Block-level names of the sublayer-output norms (Gemma 2/3), if any."""
        return tuple(n for n in (self.attn_post_norm, self.mlp_post_norm) if n is not None)

    @property
    def moe_block(self) -> str | None:
        """Block-level path of the mixture-of-experts module (the parent of ``experts``)."""
        return None if self.experts is None else self.experts.rpartition(".")[0]

    def mlp_units(self, block: nn.Module) -> tuple["ArchAdapter", ...]:
        """The MLPs of ``block`` as adapters whose ``gate``/``up``/``down`` name one MLP each: the
        adapter itself for a dense block; every expert, then the shared expert, for a MoE block
        (pruning methods prune each unit's channels with that unit's own statistics)."""
        if self.experts is None:
            return (self,)
        none = dict(experts=None, router=None, shared_expert=None, shared_expert_gate=None)
        units = [replace(self, gate=f"{self.experts}.{e}.gate_proj", up=f"{self.experts}.{e}.up_proj",
                         down=f"{self.experts}.{e}.down_proj", **none)
                 for e in range(get_module(block, self.experts).num_experts)]
        if self.shared_expert:
            s = self.shared_expert
            units.append(replace(self, gate=f"{s}.gate_proj", up=f"{s}.up_proj", down=f"{s}.down_proj", **none))
        return tuple(units)

    def mlp_reader_paths(self, block: nn.Module) -> tuple[str, ...]:
        """Block-level paths of everything that reads the MLP norm's output: the MLP's first
        linears, or a MoE block's router, every expert's gate/up and the shared expert."""
        if self.experts is None:
            return self.mlp_readers
        paths = [self.router] if self.router else []
        for e in range(get_module(block, self.experts).num_experts):
            paths += [f"{self.experts}.{e}.gate_proj", f"{self.experts}.{e}.up_proj"]
        if self.shared_expert:
            paths += [f"{self.shared_expert}.gate_proj", f"{self.shared_expert}.up_proj"]
        if self.shared_expert_gate:
            paths.append(self.shared_expert_gate)
        return tuple(paths)

    def mlp_writer_paths(self, block: nn.Module) -> tuple[str, ...]:
        """Block-level paths of the MLP's residual writers (every expert's and the shared expert's down)."""
        if self.experts is None:
            return (self.down,)
        paths = [f"{self.experts}.{e}.down_proj" for e in range(get_module(block, self.experts).num_experts)]
        if self.shared_expert:
            paths.append(f"{self.shared_expert}.down_proj")
        return tuple(paths)

    def writer_paths(self, block: nn.Module) -> tuple[str, ...]:
        """Every linear of ``block`` that writes into the residual stream."""
        return (self.o,) + self.mlp_writer_paths(block)

    def refusal(self, touches: frozenset[str], method: str) -> str | None:
        """Why ``method``, which changes the structures in ``touches``, cannot run exactly on
        this family (``None``: it can). Structures: ``residual`` (rotates the residual stream),
        ``residual_channels`` (selects residual channels after the norms: DISP), ``heads`` (whole
        heads), ``values`` (value dims), ``qk`` (q/k head dims), ``mlp``; ``experts`` marks a method
        that prunes a MoE block's experts one by one (:meth:`mlp_units`)."""
        if "residual" in touches and self.post_norms:
            return (f"{method} changes the residual stream (rotation or channel selection), which must pass "
                    f"through pre-norms only; {self.name} normalises each sublayer's output "
                    f"({', '.join(self.post_norms)}): use fasp, magnitude, wanda-sp, prunenet, modegpt or "
                    "dotresize --where mlp (heads / MLP channels)")
        if self.experts is not None and touches - {"residual", "experts"} and "experts" not in touches:
            return (f"{method} prunes inside the blocks ({', '.join(sorted(touches - {'residual'}))}) but not "
                    f"expert by expert, which {self.name}'s mixture-of-experts blocks need: use fasp, magnitude, "
                    "wanda-sp or random (each expert pruned with its own statistics), or slicegpt / dotresize "
                    "(the residual stream rotated through the router and every expert)")
        if touches & {"heads", "qk"} and self.qk_norm_over_heads:
            return (f"{method}: {self.name} normalises q and k over all heads together, so removing heads or "
                    "head dims changes the scale of the kept ones; prune value channels and MLP channels "
                    "only (--attention channels or none; MoDeGPT: --modules mlp,vo)")
        if "qk" in touches and self.head_norms:
            return (f"{method}: {self.name} has per-head q/k norms over the head dim, so q/k head dims cannot "
                    "be cut exactly; use --modules mlp,vo")
        return None

    @property
    def attn_readers(self) -> tuple[str, ...]:
        """Block-level paths of the linears that read the attention norm output."""
        return (self.q, self.k, self.v)

    @property
    def mlp_readers(self) -> tuple[str, ...]:
        """Block-level paths of the linears that read the MLP norm output."""
        return tuple(p for p in (self.gate, self.up) if p is not None)

    @property
    def writers(self) -> tuple[str, ...]:
        """Block-level paths of the linears that write into the residual stream."""
        return (self.o, self.down)

    def block_layout(self, config: Any) -> dict[str, Any]:
        """The submodule layout a :class:`SlimBlock` needs (JSON-serialisable)."""
        lay: dict[str, Any] = {"attn_norm": self.attn_norm, "attn": self.attn, "mlp_norm": self.mlp_norm}
        if self.parallel != (self.mlp_norm is None):  # written only where ``mlp_norm`` alone would mislead
            lay["parallel"] = self.parallel
        if self.mlp is not None:
            lay["mlp"] = self.mlp
        else:
            lay.update(mlp=None, fc_in=self.up, fc_out=self.down, act=getattr(config, self.act_config_attr))
        if self.block_args:
            lay["positional"] = list(self.block_args)
        if self.tuple_output:
            lay["tuple_output"] = True
        for key in ("attn_post_norm", "mlp_post_norm"):  # only where the family has them
            if getattr(self, key) is not None:
                lay[key] = getattr(self, key)
        scale = self.output_scale(config)
        if scale != 1.0:
            lay["out_scale"] = scale
        return lay

    def output_scale(self, config: Any) -> float:
        """The scalar multiplying each sublayer's output (Granite's ``residual_multiplier``; else 1)."""
        if self.residual_multiplier is None:
            return 1.0
        return float(getattr(config, self.residual_multiplier))

    def block_module_names(self) -> list[str]:
        """Top-level names of the block's submodules kept in a SlimBlock."""
        names = [self.attn_norm, self.attn] if self.attn_norm is not None else [self.attn]
        if self.mlp_norm is not None:
            names.append(self.mlp_norm)
        names += [self.mlp] if self.mlp is not None else [self.up, self.down]
        return names + list(self.post_norms)

    # ----- access ---------------------------------------------------------------
    def check(self, config: Any) -> None:
        """Raise UnsupportedModelError if this variant of the family is unsupported."""
        if self.validate is not None:
            self.validate(config)

    def for_config(self, config: Any) -> "ArchAdapter":
        """The adapter of this config's variant of the family (itself unless ``specialize`` says otherwise)."""
        self.check(config)
        return self if self.specialize is None else self.specialize(config)

    def get_layers(self, model: nn.Module) -> nn.ModuleList:
        return get_module(model, self.layers)  # type: ignore[return-value]

    def get(self, model: nn.Module, path: str) -> nn.Module:
        return get_module(model, path)
