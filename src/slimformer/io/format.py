"""The saved format: a first-class Hugging Face checkpoint directory.

``DIR/``
  ``model.safetensors`` (or shards + ``model.safetensors.index.json``)
  ``config.json``           base config + ``"slimformer"`` section + ``auto_map``
  ``modeling_slimformer.py`` self-contained runtime (torch + transformers only)
  ``generation_config.json``, tokenizer files, ``slimformer_report.json``

Writes are atomic: everything goes to a temporary sibling directory which is
renamed into place at the end, so an interrupted save leaves no half directory.
No pickle is read or written.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..arch import get_adapter
from ..core.dtypes import to_torch_dtype
from ..core.plan import FORMAT_VERSION
from ..core.projections import fuse_state
from ..runtime import modeling_slimformer as modeling
from ..runtime import plan_schema
from ..runtime.modeling_slimformer import SlimformerFormatError, load_compressed
from ..validate import DTYPE_NAMES, require_dir
from . import safetensors_io
from .inputs import check_checkpoint_files
from .outputs import OutputExistsError, check_output_dir, commit_dir, staged_dir  # noqa: F401 (re-exported)

logger = logging.getLogger("slimformer.io")

MODELING_FILE = Path(modeling.__file__).name
SCHEMA_FILE = Path(plan_schema.__file__).name  # imported by the runtime file: shipped next to it
AUTO_MAP = {"AutoModelForCausalLM": f"{Path(MODELING_FILE).stem}.SlimformerForCausalLM"}
DEFAULT_MAX_SHARD_BYTES = 4 * 1024**3


class PlainExportError(ValueError):
    """The compressed model cannot be described by an ordinary Hugging Face config."""


def plain_config_changes(model: nn.Module) -> dict[str, Any]:
    """Config fields that make a plain HF config describe ``model``, or raise saying why not.

    Expressible (:func:`slimformer.io.targets.plain_blockers`): the original block structure
    (no rotated residual stream, no channel subsets, whole heads only) with the same MLP width
    and the same head counts in every layer; fewer heads are written as
    ``num_attention_heads`` / ``num_key_value_heads`` with an explicit ``head_dim``.
    """
    from ..arch import get_adapter
    from ..core.plan import plan_from_model
    from .targets import base_head_counts, base_head_dim, head_counts, plain_blockers

    adapter = get_adapter(model)
    plan = plan_from_model(model, adapter).to_dict()
    cfg = model.config.to_dict()
    blockers = plain_blockers(plan, cfg)
    if blockers:
        raise PlainExportError(f"a plain config cannot express this model: {blockers[0]}")
    changes: dict[str, Any] = {adapter.mlp_width_config_attr: plan["blocks"][0]["mlp_width"]}
    if adapter.shared_expert is not None:  # Qwen2-MoE: the shared expert's width is a config field of its own
        widths = {b.get_submodule(f"{adapter.shared_expert}.up_proj").out_features for b in adapter.get_layers(model)}
        if len(widths) != 1 or adapter.shared_expert_width_config_attr is None:
            raise PlainExportError(f"a plain config cannot express this model: its shared experts have widths "
                                   f"{sorted(widths)} and a config has one")
        changes[adapter.shared_expert_width_config_attr] = widths.pop()
    heads = head_counts(plan, cfg)[0]
    if heads[0] != base_head_counts(cfg)[0]:  # query heads (whole GQA groups go, so kv heads follow them)
        changes.update(num_attention_heads=heads[0], head_dim=base_head_dim(cfg))
        if "num_key_value_heads" in cfg:
            changes["num_key_value_heads"] = heads[1]
    return changes


def _shards(state: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, t in state.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = t
        size += nbytes
    return shards


def write_weights(state: dict[str, torch.Tensor], directory: Path, max_shard_bytes: int) -> int:
    """Write safetensors (sharded with the standard index above ``max_shard_bytes``); returns bytes.

    Each file is streamed tensor by tensor (:func:`slimformer.io.safetensors_io.write_tensors`:
    tensors move to the CPU one at a time, I/O failures raise ``OSError``)."""
    total = sum(t.numel() * t.element_size() for t in state.values())
    shards = _shards(state, max_shard_bytes)
    if len(shards) == 1:
        safetensors_io.write_tensors(directory / modeling.WEIGHTS_NAME, shards[0])
        return total
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        safetensors_io.write_tensors(directory / name, shard)
        weight_map.update({k: name for k in shard})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / modeling.WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2))
    return total


def untied_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict without the head when it *is* the input embedding (HF re-ties it on load)."""
    state = model.state_dict(keep_vars=True)
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if head is not None and emb is not None and head.weight is emb.weight:
        name = next(k for k, v in state.items() if v is head.weight and not k.endswith("embed_tokens.weight"))
        del state[name]
    return state


def _write_config(model: nn.Module, directory: Path, section: dict[str, Any], plain: dict[str, Any] | None) -> None:
    cfg = model.config.to_dict()
    cfg["architectures"] = [type(model).__name__]
    cfg["dtype"] = str(next(model.parameters()).dtype).replace("torch.", "")
    cfg["slimformer"] = section
    if plain is None:
        cfg["auto_map"] = dict(AUTO_MAP)
        head, emb = model.get_output_embeddings(), model.get_input_embeddings()
        cfg["tie_word_embeddings"] = head is not None and emb is not None and head.weight is emb.weight
    else:
        cfg.update(plain)
        cfg.pop("auto_map", None)
    (directory / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str) + "\n")


def write_metadata(
    model: nn.Module,
    directory: Path,
    section: dict[str, Any],
    report: dict[str, Any] | None = None,
    tokenizer: Any = None,
    plain_changes: dict[str, Any] | None = None,
    extra_files: dict[str, bytes] | None = None,
) -> None:
    """Everything of the format except the weights: config (with ``section``), generation
    config, tokenizer, the runtime files (unless plain), the report and ``extra_files``.

    Call it after the weights are written: ``section["weights_sha256"]`` records the sha256
    of every weight file found in ``directory`` (replacing any value ``section`` carried)."""
    hashes = plan_schema.weights_sha256(directory)
    section = {k: v for k, v in section.items() if k != "weights_sha256"}
    if hashes:
        section["weights_sha256"] = hashes
    _write_config(model, directory, section, plain_changes)
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.save_pretrained(str(directory))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
    if plain_changes is None:
        shutil.copyfile(modeling.__file__, directory / MODELING_FILE)
        shutil.copyfile(plan_schema.__file__, directory / SCHEMA_FILE)
    if report is not None:
        (directory / "slimformer_report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    for name, data in (extra_files or {}).items():
        if Path(name).name != name or (directory / name).exists():
            raise ValueError(f"extra file name {name!r} must be a plain file name not used by the format")
        (directory / name).write_bytes(data)


def save_compressed(
    model: nn.Module,
    out: str | os.PathLike,
    section: dict[str, Any],
    report: dict[str, Any] | None = None,
    tokenizer: Any = None,
    overwrite: bool = False,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    plain: bool | None = None,
    extra_files: dict[str, bytes] | None = None,
    inputs: tuple[str | os.PathLike | None, ...] = (),
) -> Path:
    """Write a compressed model atomically.

    Args:
        section: the ``"slimformer"`` config section (must contain ``plan``).
        report: written to ``slimformer_report.json``.
        tokenizer: saved alongside when given.
        plain: ``True``: write an ordinary HF config (no remote code) or raise
            :class:`PlainExportError` saying why the model needs one; ``None`` (default): an
            ordinary config whenever it can describe the model, else the remote-code format;
            ``False``: always the remote-code format.
        extra_files: more files (plain names -> bytes) to write into the directory.
        inputs: paths the run read (model, data, ...): ``out`` may not be or contain one
            (see :func:`slimformer.io.outputs.check_output_dir` for what ``overwrite`` may replace).
    """
    plain_changes = None
    if plain or plain is None:
        try:
            plain_changes = plain_config_changes(model)
        except PlainExportError as exc:
            if plain:
                raise PlainExportError(f"{exc}; save without plain=True - the directory then loads with "
                                       "trust_remote_code=True") from None
    out = check_output_dir(out, overwrite, inputs=inputs).absolute()
    section = {"format_version": FORMAT_VERSION, **section, "plain": plain_changes is not None}
    with staged_dir(out) as tmp:
        state = untied_state(model)
        if plain_changes is not None:  # the family's own layout: fused projections written back fused
            adapter = get_adapter(model)
            state = fuse_state(state, adapter, len(adapter.get_layers(model)), model.config)
        nbytes = write_weights(state, tmp, max_shard_bytes)
        write_metadata(model, tmp, section, report, tokenizer, plain_changes, extra_files)
    logger.info("saved compressed model to %s (%.2f MB of weights)", out, nbytes / 2**20)
    return out


def export_plain(source: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Re-save the slimformer directory ``source`` with an ordinary HF config (no remote code).

    Raises :class:`PlainExportError` (saying which structure needs the remote code and which
    options avoid it) when a plain config cannot describe the model; nothing is written then.
    """
    section = read_section(source) if os.path.isdir(source) else None
    if section is None:
        raise ValueError(f"{source} is not a slimformer output directory; a model without a 'slimformer' "
                         "section already loads with plain transformers")
    if section.get("plain"):
        raise ValueError(f"{source} already has an ordinary config: it loads with plain transformers as it is")
    check_output_dir(out, overwrite, inputs=(source,))
    model, tokenizer = load_model(source)
    plain_config_changes(model)  # raises, before anything is written, when a config cannot express it
    report_path = Path(source) / "slimformer_report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else None
    keep = {k: v for k, v in section.items() if k not in ("format_version", "plain", "weights_sha256")}
    return save_compressed(model, out, keep, report, tokenizer, overwrite=overwrite, plain=True, inputs=(source,))


def read_section(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``"slimformer"`` section of ``path/config.json``, or ``None`` for other models."""
    if not (Path(path) / "config.json").is_file():
        return None
    section = plan_schema.read_config_json(path).get("slimformer")  # not JSON / not an object: format error
    if section is not None and not isinstance(section, dict):
        plan_schema.validate_section(section)  # raises: 'slimformer' must be a JSON object
    return section


def record_weights_sha256(directory: str | os.PathLike) -> None:
    """Re-record ``weights_sha256`` in ``directory/config.json`` for the weight files now there
    (after they were rewritten, e.g. by ``unpack``); a no-op when the config records none."""
    cfg_path = Path(directory) / "config.json"
    cfg = plan_schema.read_config_json(directory)
    section = cfg.get("slimformer")
    if not isinstance(section, dict) or "weights_sha256" not in section:
        return
    section["weights_sha256"] = plan_schema.weights_sha256(directory)
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str) + "\n")


TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "tokenizer.model", "vocab.json")


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    if os.path.isdir(path) and not any(os.path.exists(os.path.join(path, f)) for f in TOKENIZER_FILES):
        return None  # a directory without tokenizer files (e.g. a test fixture)

    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # a model without tokenizer files is still usable
        logger.warning("no tokenizer loaded from %s: %s", path, exc)
        return None


def load_model(
    name_or_path: str | os.PathLike,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
) -> tuple[nn.Module, Any]:
    """Load a dense HF model (hub id or local dir) or a slimformer-compressed dir.

    Returns ``(model, tokenizer)``; the model is in eval mode. ``dtype`` may be a
    torch dtype or its name (``"float32"``, ``"bfloat16"``, ``"float16"``).
    """
    name = str(name_or_path)
    if isinstance(dtype, str):
        dtype = to_torch_dtype(dtype, DTYPE_NAMES + ("float64",))
    section = read_section(name) if os.path.isdir(name) else None
    if section is not None and not section.get("plain"):
        model = load_compressed(name, dtype=dtype, device=device)
        return model, load_tokenizer(name)
    if section is not None:  # a plain HF config: transformers builds it, the section and hashes are still checked
        modeling.check_saved(name)
    if not os.path.isdir(name) and (name.startswith((".", "/", "~")) or Path(name).suffix):
        require_dir(name)
    from transformers import AutoModelForCausalLM

    if os.path.isdir(name):
        check_checkpoint_files(name)  # a truncated dense checkpoint is named, not a traceback
    try:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype or "auto")
    except OSError as exc:
        raise FileNotFoundError(
            f"cannot load model {name!r}: not a local model directory, and the hub copy is unavailable ({exc})"
        ) from exc
    if device is not None:
        model.to(device)
    model.eval()
    return model, load_tokenizer(name)


def describe_compression(path: str | os.PathLike) -> dict[str, Any] | None:
    """Method and parameter accounting of a slimformer output dir (``None`` for other models)."""
    section = read_section(path) if os.path.isdir(path) else None
    if not section:
        return None
    prov = section.get("provenance", {})
    before, after = prov.get("params_before"), prov.get("params_after")
    return {
        "method": section.get("method"),
        "method_config": section.get("method_config"),
        "params_before": before,
        "params_after": after,
        "removed_fraction": (1 - after / before) if before and after else None,
    }
