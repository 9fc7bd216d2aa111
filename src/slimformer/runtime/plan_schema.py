"""Schema of the ``"slimformer"`` config section, checked before anything is built.

This file imports only the Python standard library: ``slimformer info`` validates a
saved model without importing torch, and the file is copied next to every saved
model together with ``modeling_slimformer.py`` (which imports it relatively), so a
model loaded through ``trust_remote_code`` without slimformer installed is checked
by the same code.

What is checked, in this order (each failure is one :class:`SlimformerFormatError`
naming the key and what to do):

* ``config.json`` is a JSON object (:func:`read_config_json`);
* the section is a JSON object with a supported ``format_version`` and a ``plan``;
* every plan key has the right type and a sane range, ``architecture`` has the form of a
  transformers ``*ForCausalLM`` class (the loader builds it only if transformers maps the
  plan's ``model_type`` to it: :func:`modeling_slimformer.causal_lm_class`);
* the plan agrees with the base config (``num_hidden_layers`` blocks, ``hidden_size``
  residual width, ``model_type``);
* with the safetensors header shapes: the weights hold exactly the plan's layers and
  every tensor the plan describes has the plan's shape (:func:`validate_plan`);
* ``weights_sha256`` (optional): the sha256 of every weight file recorded at save time
  (:func:`check_weights_sha256` streams the files).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from typing import Any, Iterable, Mapping

#: Section versions this loader reads (``slimformer.core.plan.FORMAT_VERSION`` is the newest).
#: 1: the original plan. 2: adds, all optional, per-block head shapes (``n_heads``,
#: ``n_kv_heads``, ``head_dim``, ``qk_head_dim``, ``v_head_dim``), ``qk_index``, the residual
#: channel sets of :data:`CHANNEL_SETS`, plan ``fused`` / ``tied_head`` and the section's
#: ``weights_sha256``. Late v1 writers already wrote those fields, so both versions are checked
#: by the same rules (a v1 section with them stays valid). 3: adds the optional plan field
#: ``head_proj`` (keep-tied SliceGPT: the final norm is followed by a bias-free linear
#: ``<final_norm>.proj`` ``[embed_width, head_width]`` and the head reads ``embed_width``);
#: v1/v2 sections do not carry it and are read unchanged.
SUPPORTED_FORMAT_VERSIONS = (1, 2, 3)
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"

#: the form of ``plan.architecture``: a transformers ``*ForCausalLM`` class name. The schema checks
#: the form only (it is torch- and transformers-free); the loader
#: (:func:`modeling_slimformer.load_compressed`) builds the class only when transformers' own
#: causal-LM mapping names it for the plan's ``model_type``, so no other class can be reached.
ARCHITECTURE_PATTERN = re.compile(r"[A-Z][A-Za-z0-9_]{0,80}(ForCausalLM|LMHeadModel)")
MODEL_TYPE_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,80}")

#: activation names a fused block without an MLP module may use (``modeling_slimformer.ACTIVATIONS``)
ACTIVATION_NAMES = ("relu", "gelu", "gelu_new", "gelu_pytorch_tanh", "silu")

#: plan field -> (plan path keys of the linears it applies to, gather (True) or scatter)
CHANNEL_SETS: dict[str, tuple[tuple[str, ...], bool]] = {
    "attn_in_index": (("q", "k", "v"), True),
    "mlp_in_index": (("gate", "up"), True),
    "attn_out_index": (("o",), False),
    "mlp_out_index": (("down",), False),
}

#: sane upper bounds: far above any real model, far below what exhausts memory
MAX_WIDTH = 1 << 22
MAX_LAYERS = 4096
#: bytes read at a time when hashing a weight file
HASH_CHUNK_BYTES = 8 * 2**20

_FIX = "the saved config.json is corrupt or was edited: restore it from the original save, or save the model again"
_PATH_PART = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]*|[0-9]+)$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_PLAN_PATHS_REQUIRED = ("layers", "embed", "final_norm", "head", "q", "k", "v", "o", "up", "down")
_PLAN_PATHS_OPTIONAL = ("gate", "pos_embed")
_BLOCK_HEAD_FIELDS = ("n_heads", "n_kv_heads", "head_dim", "qk_head_dim", "v_head_dim")


class SlimformerFormatError(ValueError):
    """A saved compressed model is missing, corrupt, or of an unsupported format."""


# ----------------------------------------------------------------------------------
# small checkers
# ----------------------------------------------------------------------------------


def _bad(key: str, problem: str) -> SlimformerFormatError:
    return SlimformerFormatError(f"config.json: slimformer.{key} {problem}; {_FIX}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(key: str, value: Any, lo: int, hi: int, none_ok: bool = False) -> None:
    if value is None and none_ok:
        return
    if not _is_int(value) or not lo <= value <= hi:
        what = "an integer" + (" or null" if none_ok else "")
        raise _bad(key, f"must be {what} in [{lo}, {hi}], found {_short(value)}")


def _bool(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise _bad(key, f"must be true or false, found {_short(value)}")


def _short(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list, str, int, float, bool, type(None))) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _module_path(key: str, value: Any, none_ok: bool = False) -> None:
    """A dotted attribute path (``self_attn.q_proj``): identifiers or list indices, no dunders."""
    if value is None and none_ok:
        return
    if not (isinstance(value, str) and value and all(_PATH_PART.match(p) and not p.startswith("__")
                                                     for p in value.split("."))):
        raise _bad(key, f"must be a dotted module path such as 'self_attn.q_proj', found {_short(value)}")


def _require(where: str, data: Mapping[str, Any], keys: Iterable[str]) -> None:
    for k in keys:
        if k not in data:
            raise _bad(f"{where}.{k}", "is missing")


# ----------------------------------------------------------------------------------
# config.json and the section
# ----------------------------------------------------------------------------------


def read_config_json(path: str | os.PathLike) -> dict[str, Any]:
    """``path/config.json`` as a dict; SlimformerFormatError when missing, not JSON or not an object."""
    cfg = os.path.join(os.fspath(path), "config.json")
    if not os.path.isfile(cfg):
        raise SlimformerFormatError(f"{path} has no config.json: not a saved model directory")
    try:
        with open(cfg, encoding="utf-8") as fh:
            data = json.load(fh)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, too deep/long
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SlimformerFormatError(f"{cfg} is not valid JSON ({first}); restore config.json from the original save")
    if not isinstance(data, dict):
        raise SlimformerFormatError(f"{cfg} must hold a JSON object, found a JSON {type(data).__name__}; "
                                    "restore config.json from the original save")
    return data


def validate_section(
    section: Any,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    base_config: Mapping[str, Any] | None = None,
) -> None:
    """Check a whole ``"slimformer"`` section before anything is built.

    Args:
        section: the parsed ``"slimformer"`` value of ``config.json``.
        shapes: tensor name -> shape from the safetensors headers; when given, the
            plan must describe exactly these tensors (so a config claiming more layers
            than the weights hold is refused before building anything).
        base_config: the whole parsed ``config.json``; when given, the plan must agree
            with its ``num_hidden_layers``, ``hidden_size``, ``model_type`` and ``architectures``.

    Raises:
        SlimformerFormatError: one line naming the key and what to do.
    """
    if section is not None and not isinstance(section, dict):
        raise SlimformerFormatError(f"config.json: 'slimformer' must be a JSON object, found a JSON "
                                    f"{type(section).__name__}; restore config.json from the original save")
    if section is None or ("plan" not in section and "format_version" not in section):
        raise SlimformerFormatError("config.json has no valid 'slimformer' section: not a slimformer model")
    version = section.get("format_version")
    if not _is_int(version) or version not in SUPPORTED_FORMAT_VERSIONS:
        raise SlimformerFormatError(
            f"slimformer format_version {version!r} is not supported by this loader "
            f"(supports {list(SUPPORTED_FORMAT_VERSIONS)}); upgrade slimformer"
        )
    for key in ("plain",):
        if key in section:
            _bool(key, section[key])
    if "weights_sha256" in section:
        _validate_hashes(section["weights_sha256"])
    plan = section.get("plan")
    if not isinstance(plan, dict):
        raise _bad("plan", f"must be a JSON object, found {_short(plan)}")
    validate_plan_schema(plan)
    if base_config is not None:
        _validate_base_config(plan, base_config)
    if shapes is not None:
        validate_against_header(plan, internal_shapes(plan, shapes) if section.get("plain") else shapes)


def _validate_hashes(hashes: Any) -> None:
    if not isinstance(hashes, dict):
        raise _bad("weights_sha256", f"must map weight file names to sha256 hex digests, found {_short(hashes)}")
    for name, digest in hashes.items():
        if not _plain_file_name(name):
            raise _bad("weights_sha256", f"names {_short(name)}, which is not a plain file name")
        if not (isinstance(digest, str) and _HEX64.match(digest)):
            raise _bad(f"weights_sha256.{name}", f"must be 64 lowercase hex digits, found {_short(digest)}")


def _plain_file_name(name: Any) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and os.path.basename(name) == name and "\\" not in name


def validate_plan_schema(plan: dict[str, Any]) -> None:
    """Types, ranges and internal consistency of a plan (no weights, no base config needed)."""
    _require("plan", plan, ("architecture", "model_type", "full_width", "embed_width", "head_width", "head_bias",
                            "norm_eps", "layout", "paths", "blocks"))
    arch = plan["architecture"]
    if not isinstance(arch, str) or not ARCHITECTURE_PATTERN.fullmatch(arch):
        raise SlimformerFormatError(
            f"config.json: slimformer.plan.architecture {_short(arch)} is not a transformers *ForCausalLM "
            f"class name; {_FIX}")
    if not isinstance(plan["model_type"], str) or not MODEL_TYPE_PATTERN.fullmatch(plan["model_type"]):
        raise _bad("plan.model_type", f"must be a transformers model_type (lower-case name), found "
                                      f"{_short(plan['model_type'])}")
    _int("plan.full_width", plan["full_width"], 1, MAX_WIDTH)
    d = plan["full_width"]
    _int("plan.embed_width", plan["embed_width"], 1, d)
    _int("plan.head_width", plan["head_width"], 1, d)
    _bool("plan.head_bias", plan["head_bias"])
    _validate_unfused(plan.get("unfused"))
    conv1d = plan.get("conv1d")
    if conv1d is not None:
        if not isinstance(conv1d, list) or len(conv1d) > 8:
            raise _bad("plan.conv1d", f"must be a list of at most 8 module paths, found {_short(conv1d)}")
        for i, path in enumerate(conv1d):
            _module_path(f"plan.conv1d[{i}]", path)
    for key in ("fused", "tied_head", "head_proj"):
        if key in plan:
            _bool(f"plan.{key}", plan[key])
    if plan.get("head_proj", False) and not plan.get("fused", True):
        raise _bad("plan.head_proj", "needs a fused plan (fused=true): the head-input map follows the fused final norm")
    if "format_version" in plan:
        _int("plan.format_version", plan["format_version"], 1, max(SUPPORTED_FORMAT_VERSIONS))
    eps = plan["norm_eps"]
    if not (isinstance(eps, (int, float)) and not isinstance(eps, bool) and math.isfinite(eps) and 0 < eps < 1):
        raise _bad("plan.norm_eps", f"must be a positive finite number below 1, found {_short(eps)}")
    fused = plan.get("fused", True)
    _validate_layout(plan["layout"], fused)
    _validate_paths(plan["paths"])
    blocks = plan["blocks"]
    if not isinstance(blocks, list) or not blocks:
        raise _bad("plan.blocks", f"must be a non-empty list of blocks, found {_short(blocks)}")
    if len(blocks) > MAX_LAYERS:
        raise _bad("plan.blocks", f"lists {len(blocks)} blocks, more than the sane maximum {MAX_LAYERS}")
    parallel = bool(plan["layout"].get("parallel", plan["layout"].get("mlp_norm") is None))
    for i, bp in enumerate(blocks):
        _validate_block(i, bp, plan, parallel)


def _validate_unfused(specs: Any) -> None:
    """``unfused`` (optional): fused projections held as parts, ``[{"path": ..., "parts": [...]}, ...]``,
    and 3-D expert tensors held as an ExpertList, ``{"path": ..., "experts": E}``."""
    if specs is None:
        return
    if not isinstance(specs, list) or len(specs) > 8:
        raise _bad("plan.unfused", f"must be a list of at most 8 objects, found {_short(specs)}")
    for i, spec in enumerate(specs):
        where = f"plan.unfused[{i}]"
        if not isinstance(spec, dict):
            raise _bad(where, f"must be a JSON object, found {_short(spec)}")
        if spec.get("experts") is not None:  # 3-D expert tensors held as an ExpertList
            _require(where, spec, ("path", "experts"))
            _module_path(f"{where}.path", spec["path"])
            _int(f"{where}.experts", spec["experts"], 1, 4096)
            continue
        _require(where, spec, ("path", "parts"))
        _module_path(f"{where}.path", spec["path"])
        parts = spec["parts"]
        if not isinstance(parts, list) or not 2 <= len(parts) <= 8 or len(set(map(str, parts))) != len(parts):
            raise _bad(f"{where}.parts", f"must be 2 to 8 distinct module names, found {_short(parts)}")
        _int(f"{where}.head_dim", spec.get("head_dim"), 1, 65536, none_ok=True)
        for j, part in enumerate(parts):
            if not isinstance(part, str) or not part.isidentifier() or part.startswith("_"):
                raise _bad(f"{where}.parts[{j}]", f"must be a module name, found {_short(part)}")


def _validate_layout(layout: Any, fused: bool) -> None:
    if not isinstance(layout, dict):
        raise _bad("plan.layout", f"must be a JSON object, found {_short(layout)}")
    _require("plan.layout", layout, ("attn_norm", "attn", "mlp_norm"))
    _module_path("plan.layout.attn_norm", layout["attn_norm"], none_ok=not fused)  # OLMo-2: no pre-norms
    if "parallel" in layout:
        _bool("plan.layout.parallel", layout["parallel"])
    if "tuple_output" in layout:
        _bool("plan.layout.tuple_output", layout["tuple_output"])
    positional = layout.get("positional")
    if positional is not None and (not isinstance(positional, list) or len(positional) > 8 or not all(
            isinstance(n, str) and n.isidentifier() and not n.startswith("_") for n in positional)):
        raise _bad("plan.layout.positional", f"must be a list of argument names, found {_short(positional)}")
    _module_path("plan.layout.attn", layout["attn"])
    _module_path("plan.layout.mlp_norm", layout["mlp_norm"], none_ok=True)
    if layout.get("mlp") is not None:
        _module_path("plan.layout.mlp", layout["mlp"])
        return
    _require("plan.layout", layout, ("fc_in", "fc_out", "act"))
    _module_path("plan.layout.fc_in", layout["fc_in"])
    _module_path("plan.layout.fc_out", layout["fc_out"])
    if fused and layout["act"] not in ACTIVATION_NAMES:
        raise _bad("plan.layout.act", f"must be one of {', '.join(ACTIVATION_NAMES)}, found {_short(layout['act'])}")


def _validate_paths(paths: Any) -> None:
    if not isinstance(paths, dict):
        raise _bad("plan.paths", f"must be a JSON object, found {_short(paths)}")
    _require("plan.paths", paths, _PLAN_PATHS_REQUIRED)
    for key in _PLAN_PATHS_REQUIRED:
        _module_path(f"plan.paths.{key}", paths[key])
    for key in _PLAN_PATHS_OPTIONAL:
        _module_path(f"plan.paths.{key}", paths.get(key), none_ok=True)


def _validate_block(i: int, bp: Any, plan: dict[str, Any], parallel: bool) -> None:
    where = f"plan.blocks[{i}]"
    if not isinstance(bp, dict):
        raise _bad(where, f"must be a JSON object, found {_short(bp)}")
    _require(where, bp, ("d_in", "d_mid", "d_out", "attn_shortcut", "mlp_shortcut", "q_out", "k_out", "v_out",
                         "mlp_width"))
    d = plan["full_width"]
    _int(f"{where}.d_in", bp["d_in"], 1, d)
    _int(f"{where}.d_mid", bp["d_mid"], 1, d, none_ok=True)
    _int(f"{where}.d_out", bp["d_out"], 1, d)
    for key in ("q_out", "k_out", "v_out", "mlp_width"):
        _int(f"{where}.{key}", bp[key], 0, MAX_WIDTH)
    _bool(f"{where}.attn_shortcut", bp["attn_shortcut"])
    _bool(f"{where}.mlp_shortcut", bp["mlp_shortcut"])
    if parallel and bp["d_mid"] is not None:
        raise _bad(f"{where}.d_mid", "must be null in a parallel block")
    if not parallel and bp["d_mid"] is None:
        raise _bad(f"{where}.d_mid", "must be an integer in a sequential block")
    if bp["mlp_shortcut"] and bp["d_mid"] is None:
        raise _bad(f"{where}.mlp_shortcut", "must be false in a parallel block (it has one shortcut, attn_shortcut)")
    for key in _BLOCK_HEAD_FIELDS:
        _int(f"{where}.{key}", bp.get(key), 1, MAX_WIDTH, none_ok=True)
    if bp.get("n_heads") is not None:
        _validate_heads(i, bp, None)
    if _has_channel_sets(bp):
        _channel_set_widths(i, bp, plan)


#: config.json keys of families that name the standard fields differently (GPT-2's attribute_map)
CONFIG_ALIASES: dict[str, tuple[str, ...]] = {
    "num_hidden_layers": ("n_layer",),
    "hidden_size": ("n_embd",),
    "num_attention_heads": ("n_head",),
    "intermediate_size": ("n_inner",),
    "max_position_embeddings": ("n_positions",),
}


def standard_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` (a parsed ``config.json``) with the standard field names filled in from the
    family's own names where it has no standard one (GPT-2: ``n_layer`` -> ``num_hidden_layers``)."""
    out = dict(config)
    for name, aliases in CONFIG_ALIASES.items():
        if out.get(name) is None:
            for alias in aliases:
                if out.get(alias) is not None:
                    out[name] = out[alias]
                    break
    return out


def _validate_base_config(plan: dict[str, Any], base: Mapping[str, Any]) -> None:
    """The plan must agree with the base config it is applied to (``config.json`` itself)."""
    base = standard_config(base)
    n = base.get("num_hidden_layers")
    if not _is_int(n):
        raise SlimformerFormatError(f"config.json: num_hidden_layers must be an integer, found {_short(n)}; {_FIX}")
    if n != len(plan["blocks"]):  # (the plan's block count is already bounded)
        raise SlimformerFormatError(f"config.json: num_hidden_layers is {n} but slimformer.plan.blocks lists "
                                    f"{len(plan['blocks'])} blocks; {_FIX}")
    if "hidden_size" in base and base["hidden_size"] != plan["full_width"]:
        raise SlimformerFormatError(f"config.json: hidden_size is {_short(base['hidden_size'])} but "
                                    f"slimformer.plan.full_width is {plan['full_width']}; {_FIX}")
    if "model_type" in base and base["model_type"] != plan["model_type"]:
        raise SlimformerFormatError(f"config.json: model_type is {_short(base['model_type'])} but "
                                    f"slimformer.plan.model_type is {_short(plan['model_type'])}; {_FIX}")
    archs = base.get("architectures")
    if isinstance(archs, list) and archs and plan["architecture"] not in archs:
        raise SlimformerFormatError(f"config.json: architectures is {_short(archs)} but "
                                    f"slimformer.plan.architecture is {_short(plan['architecture'])}; {_FIX}")
    # widths may only shrink: bounded by the base config's attention and MLP sizes (when it states them)
    heads, kv = base.get("num_attention_heads"), base.get("num_key_value_heads") or base.get("num_attention_heads")
    hd = base.get("head_dim") or (plan["full_width"] // heads if _is_int(heads) and heads > 0 else None)
    mlp = base.get("intermediate_size", base.get("ffn_dim"))
    limits = {}
    if _is_int(heads) and _is_int(kv) and _is_int(hd):
        limits.update(q_out=heads * hd, k_out=kv * hd, v_out=kv * hd)
    if _is_int(mlp):
        limits["mlp_width"] = mlp
    for i, bp in enumerate(plan["blocks"]):
        for key, hi in limits.items():
            if bp[key] > hi:
                raise _bad(f"plan.blocks[{i}].{key}", f"is {bp[key]}, more than the base model's {hi} "
                                                      "(config.json); compression never widens a layer")


# ----------------------------------------------------------------------------------
# the plan against the safetensors header shapes
# ----------------------------------------------------------------------------------


def validate_against_header(plan: dict[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> None:
    """The weights hold exactly the plan's layers, each tensor with the plan's shape."""
    prefix = plan["paths"]["layers"] + "."
    present = set()
    for key in shapes:
        if key.startswith(prefix):
            head = key[len(prefix):].split(".", 1)[0]
            if head.isdigit():
                present.add(int(head))
    n = len(plan["blocks"])
    if present != set(range(n)):
        extra = sorted(present - set(range(n)))
        what = (f"layer {extra[0]} beyond the plan's last block" if extra else
                f"{len(present)} of its layers (first missing: {min(set(range(n)) - present)})")
        raise SlimformerFormatError(f"config.json: slimformer.plan.blocks lists {n} blocks but the weights hold {what}; "
                                    "the config and the weight files do not belong together: restore both from "
                                    "the original save")
    validate_plan(plan, shapes)


def _part_rows(plan: Mapping[str, Any], bp: Mapping[str, Any], full_path: str) -> int | None:
    """Output rows of the part at block-level ``full_path`` (a q/k/v or gate/up path of the plan)."""
    rows = {"q": bp["q_out"], "k": bp["k_out"], "v": bp["v_out"], "gate": bp["mlp_width"], "up": bp["mlp_width"]}
    return next((n for key, n in rows.items() if plan["paths"].get(key) == full_path), None)


def internal_shapes(plan: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The shapes of a *plain* save's checkpoint as slimformer holds the model: a plain save writes the
    family's own layout (fused ``qkv_proj`` / ``c_attn`` / ``query_key_value``, GPT-2's ``Conv1D``
    ``[in, out]``, 3-D expert tensors); the plan describes the parts (``unfused``, ``conv1d``)."""
    out = dict(shapes)
    layers = plan["paths"]["layers"]
    for i, bp in enumerate(plan["blocks"]):
        pre = f"{layers}.{i}."
        for path in plan.get("conv1d") or []:
            key = pre + path + ".weight"
            if key in out and len(out[key]) == 2:
                out[key] = (out[key][1], out[key][0])  # Conv1D [in, out] -> nn.Linear [out, in]
        for spec in plan.get("unfused") or []:
            base = pre + spec["path"]
            if spec.get("experts") is not None:
                gate_up, down = out.pop(base + ".experts.gate_up_proj", None), out.pop(base + ".experts.down_proj", None)
                if gate_up is not None and down is not None and len(gate_up) == 3 and len(down) == 3:
                    for e in range(gate_up[0]):
                        e_pre = f"{base}.experts.{e}."
                        out[e_pre + "gate_proj.weight"] = out[e_pre + "up_proj.weight"] = (gate_up[1] // 2, gate_up[2])
                        out[e_pre + "down_proj.weight"] = (down[1], down[2])
                continue
            fused = out.get(base + ".weight")
            if fused is None or len(fused) != 2:
                continue
            for part in spec["parts"]:
                rows = _part_rows(plan, bp, f"{spec['path']}.{part}")
                if rows is not None:
                    out.setdefault(f"{base}.{part}.weight", (rows, fused[1]))
    return out


def validate_plan(plan: dict[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Check the plan's widths against the checkpoint's tensor shapes; name the offending tensor."""
    paths = plan["paths"]

    def expect(key: str, shape: tuple[int, ...]) -> None:
        if key not in shapes:
            raise SlimformerFormatError(f"tensor {key} is missing from the checkpoint (truncated or missing shard?)")
        if tuple(shapes[key]) != tuple(shape):
            raise SlimformerFormatError(f"tensor {key} has shape {list(shapes[key])}, the plan says {list(shape)}")

    for i, bp in enumerate(plan["blocks"]):
        pre = f"{paths['layers']}.{i}."
        after_attn = bp["d_out"] if bp["d_mid"] is None else bp["d_mid"]
        mlp_in = bp["d_in"] if bp["d_mid"] is None else bp["d_mid"]
        # widths the linears read / write: the residual widths, or the sizes of the channel subsets
        w = _channel_set_widths(i, bp, plan) if _has_channel_sets(bp) else {}
        attn_read, mlp_read = w.get("attn_in_index", bp["d_in"]), w.get("mlp_in_index", mlp_in)
        o_rows, down_rows = w.get("attn_out_index", after_attn), w.get("mlp_out_index", bp["d_out"])
        expect(pre + paths["q"] + ".weight", (bp["q_out"], attn_read))
        expect(pre + paths["k"] + ".weight", (bp["k_out"], attn_read))
        expect(pre + paths["v"] + ".weight", (bp["v_out"], attn_read))
        expect(pre + paths["up"] + ".weight", (bp["mlp_width"], mlp_read))
        expect(pre + paths["down"] + ".weight", (down_rows, bp["mlp_width"]))
        if paths.get("gate"):
            expect(pre + paths["gate"] + ".weight", (bp["mlp_width"], mlp_read))
        o_key = pre + paths["o"] + ".weight"
        if o_key in shapes and (len(shapes[o_key]) != 2 or shapes[o_key][0] != o_rows):
            raise SlimformerFormatError(f"tensor {o_key} has shape {list(shapes[o_key])}, the plan says {o_rows} rows")
        for key, rows in ((pre + paths["o"] + ".bias", o_rows), (pre + paths["down"] + ".bias", down_rows)):
            if w and key in shapes and tuple(shapes[key]) != (rows,):
                raise SlimformerFormatError(f"tensor {key} has shape {list(shapes[key])}, the plan says [{rows}]")
        if bp.get("n_heads") is not None:
            _validate_heads(i, bp, shapes.get(o_key))
        if bp["attn_shortcut"]:
            expect(pre + "attn_shortcut.weight", (after_attn, bp["d_in"]))
        if bp["mlp_shortcut"]:
            expect(pre + "mlp_shortcut.weight", (bp["d_out"], bp["d_mid"]))
    embed = shapes.get(paths["embed"] + ".weight", (0,))
    expect(paths["embed"] + ".weight", (embed[0], plan["embed_width"]))
    head_reads = plan["head_width"]
    if plan.get("head_proj", False):  # format 3: final norm -> proj [embed_width, head_width] -> head
        expect(paths["final_norm"] + ".proj.weight", (plan["embed_width"], plan["head_width"]))
        head_reads = plan["embed_width"]
    if not plan.get("tied_head", False):  # a tied head is the embedding, stored once
        head = shapes.get(paths["head"] + ".weight", (0,))
        expect(paths["head"] + ".weight", (head[0], head_reads))


def _has_channel_sets(bp: Mapping[str, Any]) -> bool:
    return any(bp.get(name) is not None for name in CHANNEL_SETS)


def _check_channel_index(index: list[int], width: int, what: str) -> None:
    """Increasing, distinct channel positions in ``[0, width)`` (the runtime's ``channel_index`` rule)."""
    if any(j < 0 or j >= width for j in index) or any(b <= a for a, b in zip(index, index[1:])):
        raise ValueError(f"{what} must list increasing, distinct channel positions in [0, {width})")


def _channel_set_widths(i: int, bp: Mapping[str, Any], plan: Mapping[str, Any]) -> dict[str, int]:
    """Sizes of block ``i``'s residual channel subsets, after checking they are valid index sets
    of the full-width residual stream (which the block must then keep)."""
    width = int(plan["full_width"])
    if plan.get("fused", True) or bp["d_in"] != width or bp["d_out"] != width or bp["d_mid"] not in (None, width):
        raise SlimformerFormatError(
            f"block {i}: residual channel subsets need the original blocks with a full-width residual stream "
            f"(fused=false, d_in = d_mid = d_out = {width}); the plan has fused={plan.get('fused', True)}, "
            f"d_in={bp['d_in']}, d_mid={bp['d_mid']}, d_out={bp['d_out']}")
    widths = {}
    for name in CHANNEL_SETS:
        index = bp.get(name)
        if index is None:
            continue
        if not (isinstance(index, list) and all(_is_int(j) for j in index)):
            raise SlimformerFormatError(f"block {i}: {name} must be a list of channel positions")
        try:
            _check_channel_index(index, width, name)
        except ValueError as exc:
            raise SlimformerFormatError(f"block {i}: corrupt plan: {exc}") from exc
        widths[name] = len(index)
    return widths


def _validate_heads(i: int, bp: Mapping[str, Any], o_shape: tuple[int, ...] | None) -> None:
    """Head counts and head dims of block ``i`` must agree with its projection widths."""
    n_q, n_kv, hd, qk, vd = (bp.get(k) for k in ("n_heads", "n_kv_heads", "head_dim", "qk_head_dim", "v_head_dim"))
    problems = []
    if not (_is_int(n_q) and _is_int(n_kv) and n_q >= 1 and n_kv >= 1 and n_q % n_kv == 0):
        problems.append(f"n_heads={n_q} must be a positive multiple of n_kv_heads={n_kv}")
    elif not (_is_int(hd) and all(_is_int(x) and 1 <= x <= hd for x in (qk, vd))):
        problems.append(f"qk_head_dim={qk} and v_head_dim={vd} must be in [1, head_dim={hd}]")
    else:
        idx = bp.get("qk_index")
        if qk != hd and idx is None:
            problems.append(f"qk_head_dim={qk} < head_dim={hd} needs qk_index (kept q/k channels per kv head)")
        if idx is not None and not (isinstance(idx, list) and len(idx) == n_kv and all(
                isinstance(r, list) and len(r) == qk and len(set(r)) == qk
                and all(_is_int(j) and 0 <= j < hd for j in r) for r in idx)):
            problems.append(f"qk_index must list {qk} distinct channels in [0, {hd}) for each of {n_kv} kv heads")
        for name, have, want in (("q", bp["q_out"], n_q * qk), ("k", bp["k_out"], n_kv * qk),
                                 ("v", bp["v_out"], n_kv * vd)):
            if have != want:
                problems.append(f"{name} has {have} outputs, heads x head dim give {want}")
        if o_shape is not None and (len(o_shape) != 2 or o_shape[1] != n_q * vd):
            problems.append(f"o reads {list(o_shape)[1:]} channels, n_heads x v_head_dim give {n_q * vd}")
    if problems:
        raise SlimformerFormatError(f"block {i}: inconsistent attention shape in the plan: {'; '.join(problems)}")


# ----------------------------------------------------------------------------------
# integrity: sha256 of every weight file
# ----------------------------------------------------------------------------------


def file_sha256(path: str | os.PathLike, chunk_bytes: int = HASH_CHUNK_BYTES) -> str:
    """Hex sha256 of a file, streamed ``chunk_bytes`` at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_bytes):
            h.update(block)
    return h.hexdigest()


def weight_file_names(directory: str | os.PathLike) -> list[str]:
    """Names of the weight files of a saved directory: the index's shards, or ``model.safetensors``."""
    directory = os.fspath(directory)
    index = os.path.join(directory, WEIGHTS_INDEX_NAME)
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as fh:
                names = set(json.load(fh)["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SlimformerFormatError(f"{index} is not a valid safetensors index: {exc}") from exc
        bad = sorted(repr(n) for n in names if not _plain_file_name(n))
        if bad:
            raise SlimformerFormatError(f"{index} names weight file {bad[0]}, which is not a plain file name")
        return sorted(names)
    return [WEIGHTS_NAME] if os.path.isfile(os.path.join(directory, WEIGHTS_NAME)) else []


def weights_sha256(directory: str | os.PathLike, names: Iterable[str] | None = None) -> dict[str, str]:
    """``{file name: hex sha256}`` of the weight files of ``directory`` (as written)."""
    names = sorted(weight_file_names(directory) if names is None else names)
    return dict(zip(names, _hash_files([os.path.join(os.fspath(directory), n) for n in names])))


def check_weights_sha256(directory: str | os.PathLike, section: Mapping[str, Any], names: Iterable[str]) -> list[str]:
    """Compare the weight files ``names`` with the sha256 recorded at save time.

    Returns the names checked (empty when the section records no checksums: models saved
    before checksums were recorded still load). Raises SlimformerFormatError naming the
    file when one is corrupt, missing or was not recorded.
    """
    recorded = section.get("weights_sha256")
    if recorded is None:
        return []
    _validate_hashes(recorded)
    names = sorted(os.path.basename(os.fspath(n)) for n in names)
    for n in names:
        if n not in recorded:
            raise SlimformerFormatError(f"weight file {n} has no checksum in config.json (slimformer.weights_sha256): "
                                        "the directory was changed after saving; restore it from the original save")
    gone = sorted(set(recorded) - set(names))
    if gone:
        raise SlimformerFormatError(f"weight file {gone[0]} recorded in config.json (slimformer.weights_sha256) is "
                                    "not among the model's weight files; restore the directory from the original save")
    paths = [os.path.join(os.fspath(directory), n) for n in names]
    for path, n, digest in zip(paths, names, _hash_files(paths)):
        if digest != recorded[n]:
            raise SlimformerFormatError(f"weight file {path} is corrupt: its sha256 differs from the one recorded "
                                        "when it was saved; restore it from the original save or save the model again")
    return names


def _hash_files(paths: list[str]) -> list[str]:
    """sha256 of several files, shards in parallel (hashlib releases the GIL on large buffers)."""
    workers = min(len(paths), os.cpu_count() or 1, 8)
    if workers <= 1:
        return [file_sha256(p) for p in paths]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(file_sha256, paths))


__all__ = [
    "ACTIVATION_NAMES",
    "ARCHITECTURE_PATTERN",
    "CONFIG_ALIASES",
    "MODEL_TYPE_PATTERN",
    "CHANNEL_SETS",
    "SUPPORTED_FORMAT_VERSIONS",
    "SlimformerFormatError",
    "check_weights_sha256",
    "file_sha256",
    "internal_shapes",
    "read_config_json",
    "validate_against_header",
    "validate_plan",
    "validate_plan_schema",
    "standard_config",
    "validate_section",
    "weight_file_names",
    "weights_sha256",
]
