"""``slimformer info``: read a saved model's ``"slimformer"`` section and summarise it, torch-free (stays fast)."""

from __future__ import annotations

import json
import os
from typing import Any

from ..runtime.plan_schema import read_config_json, validate_section
from ..validate import require_dir
from .targets import export_targets, format_targets


def read_info(path: str | os.PathLike) -> dict[str, Any]:
    """The validated ``"slimformer"`` section of the saved model in directory ``path``.

    Raises:
        FileNotFoundError: no such directory.
        ValueError: not a slimformer output directory, or an invalid section.
    """
    path = require_dir(path, "directory")
    config = read_config_json(path) if (path / "config.json").is_file() else {}
    section = config.get("slimformer")
    if section is None:
        raise ValueError(f"{path} is not a slimformer output directory (no 'slimformer' section in config.json)")
    validate_section(section, base_config=config)  # the whole section, torch-free
    return section


def format_info(section: dict[str, Any], config: dict[str, Any] | None = None) -> str:
    """Human-readable summary of a saved model's ``"slimformer"`` section.

    With the directory's ``config`` (the parsed ``config.json``), it also says where the model
    runs: remote code, plain transformers, llama.cpp (:mod:`slimformer.io.targets`).
    """
    prov = section.get("provenance", {})
    plan = section["plan"]
    before, after = prov.get("params_before"), prov.get("params_after")
    lines = [
        f"method          {section.get('method')}  {json.dumps(section.get('method_config', {}))}",
        f"format_version  {section.get('format_version')}{'  (plain HF config)' if section.get('plain') else ''}",
        f"architecture    {plan['architecture']} ({plan['model_type']}), width {plan['full_width']}, "
        f"embedding {plan['embed_width']}, head input {plan['head_width']}",
    ]
    if before and after:
        lines.append(f"parameters      {before:,} -> {after:,} ({100 * (1 - after / before):.2f}% removed)")
    calib = prov.get("calibration") or {}
    lines.append(f"calibration     {calib.get('name')} sha256 {str(calib.get('sha256'))[:16]}... "
                 f"{calib.get('samples')} x {calib.get('seqlen')} seed {prov.get('seed')}")
    lines.append(f"versions        slimformer {prov.get('slimformer')}, torch {prov.get('torch')}, "
                 f"transformers {prov.get('transformers')}; base model {prov.get('base_model')}")
    ft = section.get("finetune")
    if ft:
        lines.append(f"finetune        LoRA r={ft['config']['lora_r']} on {','.join(ft['targets'])}, {ft['steps_done']} steps; "
                     f"held-out ppl {ft['ppl_before']['ppl']:.4f} -> {ft['ppl_after']['ppl']:.4f} "
                     f"({ft['eval_data'].get('name')})")
    if config is not None:
        plain = bool(section.get("plain"))
        lines += format_targets(export_targets(plan, config, plain), plain)
    header = ("layer", "d_in", "d_mid", "d_out", "q/k/v out", "mlp", "shortcuts")
    rows = [header] + [
        (str(i), str(b["d_in"]), "-" if b["d_mid"] is None else str(b["d_mid"]), str(b["d_out"]),
         f"{b['q_out']}/{b['k_out']}/{b['v_out']}", str(b["mlp_width"]),
         ",".join(n for n, on in (("attn", b["attn_shortcut"]), ("mlp", b["mlp_shortcut"])) if on) or "-")
        for i, b in enumerate(plan["blocks"])
    ]
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    lines.append("")
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


__all__ = ["format_info", "read_info"]
