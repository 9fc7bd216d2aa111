"""Sequential onloading: compress a model that never sits in memory as a whole.

``open_offloaded(path, out)`` builds the model as a skeleton: the embeddings,
final norm, head and every buffer are real, each decoder block's *parameters*
are on the meta device. The attached :class:`LayerStore` is the model's
:class:`~slimformer.calib.source.BlockSource`: the layer loops of the calibration code
ask it for one block at a time (``with store.block(li, device) as block``):

    load      read block i's tensors from the checkpoint's safetensors (lazily,
              only those keys) straight onto the compute device, fuse its norms
              once the pass asked for slim form (:meth:`LayerStore.fuse_norms`),
              hand the block out
    release   write the compressed block to its own output shard
              (``model-0000{i+1}-of-000{L+1}.safetensors`` in a temporary
              directory beside ``out``) and put its parameters back on meta

so peak memory is one block of weights (plus the small global tensors) and one
layer boundary of calibration activations. Activations stay on the CPU
(``activations="cpu"``, pinned when the compute device is a GPU) or go to files
in a scratch directory (``activations="disk"``), read back one batch at a time.
:meth:`LayerStore.finish` writes the global tensors as the last shard, the
index, config, runtime file and report, then renames the directory into place
(the same atomic commit as :func:`slimformer.io.format.save_compressed`).
Shards are written and checkpoint tensors read with :mod:`slimformer.io.safetensors_io`.

A block is written once: a second modifying pass over the same block raises
instead of silently re-reading the uncompressed weights.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from ..arch import ArchAdapter, get_adapter
from ..core.dtypes import to_torch_dtype
from ..io.safetensors_io import read_tensors, write_tensors
from ..memory import trim_heap
from ..validate import require_dir
from .source import BlockSource
from .stash import ACTIVATION_MODES, ActivationStash

logger = logging.getLogger("slimformer.calib.offload")

_ATTR = "_slimformer_layer_store"


class CheckpointSource:
    """Reads named tensors from a Hugging Face safetensors checkpoint directory, lazily.

    Handles one ``model.safetensors`` or shards with ``model.safetensors.index.json``.
    Each :meth:`read` opens the files it needs and closes them again, so nothing
    stays mapped between blocks.
    """

    def __init__(self, directory: str | os.PathLike, prefix: str = "model") -> None:
        from ..runtime.modeling_slimformer import WEIGHTS_INDEX_NAME, WEIGHTS_NAME, weight_map

        self.directory = Path(directory)
        has_safetensors = (self.directory / WEIGHTS_INDEX_NAME).is_file() or (self.directory / WEIGHTS_NAME).is_file()
        if not has_safetensors and (any(self.directory.glob("*.bin")) or any(self.directory.glob("*.pt"))):
            raise ValueError(f"{self.directory} holds pickled weights (*.bin); offloading reads safetensors only: "
                             "convert it once with model.save_pretrained(dir, safe_serialization=True)")
        self.files = {k: Path(f) for k, f in weight_map(str(self.directory)).items()}
        self.prefix = prefix

    def key(self, name: str) -> str | None:
        """The checkpoint key of model tensor ``name`` (some checkpoints omit the base-model prefix)."""
        if name in self.files:
            return name
        p = self.prefix + "."
        if name.startswith(p) and name[len(p):] in self.files:
            return name[len(p):]
        return None

    def read(self, names: list[str], device: torch.device, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
        """``{name: tensor}`` for the model tensor names given (KeyError naming the missing ones)."""
        keys = {n: self.key(n) for n in names}
        missing = [n for n, k in keys.items() if k is None]
        if missing:
            raise KeyError(f"checkpoint {self.directory} has no tensor(s) {missing[:5]}"
                           f"{' ...' if len(missing) > 5 else ''}: not a checkpoint of this architecture?")
        by_file: dict[Path, list[str]] = {}
        for n, k in keys.items():
            by_file.setdefault(self.files[k], []).append(n)  # type: ignore[index]
        out: dict[str, torch.Tensor] = {}
        for path, group in by_file.items():
            for n, t in read_tensors(path, {n: keys[n] for n in group}).items():  # type: ignore[misc]
                t = t.to(dtype) if dtype is not None and t.is_floating_point() else t
                out[n] = t.to(device) if device.type != "cpu" else t
        return out


class LayerStore(BlockSource):
    """The :class:`~slimformer.calib.source.BlockSource` of an offloaded model: loads one decoder
    block at a time from the checkpoint and writes it out when done.

    Built by :func:`open_offloaded`; :func:`slimformer.api.compress` hands it to the method
    as ``Runtime.blocks``. ``fuse_on_load``: each block's norms are fused right after it
    is loaded (set by :meth:`fuse_norms`).
    """

    offloaded = True

    def __init__(self, model: nn.Module, adapter: ArchAdapter, source: CheckpointSource, out: Path,
                 tmp: Path, activations: str, dtype: torch.dtype, writer: bool = True) -> None:
        super().__init__(model, adapter)
        self.source = source
        self.out, self.tmp, self.dtype = out, tmp, dtype
        self.activations, self.writer = activations, writer
        self.fuse_on_load = False
        self.weight_map: dict[str, str] = {}
        self.written: set[int] = set()
        self.bytes_written = 0
        self.scratch = Path(tempfile.mkdtemp(prefix=".activations-", dir=tmp)) if activations == "disk" else None
        self.created_parents: list[Path] = []  # missing parents of ``out`` made for it (removed on failure)

    # -- BlockSource ---------------------------------------------------------------------------
    def stash(self, device: torch.device, offload_activations: bool = True) -> ActivationStash:
        """Activations go where the store was opened to put them (``offload_activations`` is moot)."""
        return ActivationStash(self.activations, device, self.scratch)

    @contextmanager
    def block(self, li: int, device: torch.device, write: bool = True) -> Iterator[nn.Module]:
        """Block ``li`` loaded onto ``device``; written to its shard afterwards (``write`` and the
        ``with`` body succeeded) or dropped; either way its parameters go back to meta."""
        block = self.load(li, device)
        ok = False
        try:
            yield block
            ok = True
        finally:
            self.release(li, write=write and ok)

    def fuse_norms(self) -> None:
        """Fuse the global tensors now and every block as it is loaded (:meth:`load`)."""
        from ..core.fuse import fuse

        if self.fuse_on_load:
            return
        fuse(self.model, self.adapter, blocks=False)
        self.fuse_on_load = True

    # -- blocks --------------------------------------------------------------------------------
    def _prefix(self, li: int) -> str:
        return f"{self.adapter.layers}.{li}."

    def shard_name(self, index: int) -> str:
        return f"model-{index + 1:05d}-of-{self.n_layers + 1:05d}.safetensors"

    def load(self, li: int, device: torch.device) -> nn.Module:
        """Materialise block ``li``'s parameters on ``device`` (norms fused when
        :attr:`fuse_on_load`); returns the block."""
        if li in self.written:
            raise RuntimeError(f"block {li} was already compressed and written; a second modifying pass over an "
                               "offloaded model is not supported (run this method without --offload)")
        layers = self.adapter.get_layers(self.model)
        block = layers[li]
        names = {n: f"{self._prefix(li)}{n}" for n, p in block.named_parameters() if p.device.type == "meta"}
        tensors = self.source.read(list(names.values()), device, self.dtype)
        for local, full in names.items():
            owner, attr = _owner(block, local)
            owner._parameters[attr] = nn.Parameter(tensors[full], requires_grad=False)
        block.to(device)  # buffers (rotary tables etc.)
        if self.fuse_on_load:
            block = self._fuse_block(block)
        layers[li] = block
        return block

    def _fuse_block(self, block: nn.Module) -> nn.Module:
        """Slim form of a freshly loaded block (:func:`slimformer.core.fuse.fuse_block`; may replace it)."""
        from ..core.fuse import fuse_block

        return fuse_block(block, self.adapter, self.model.config)

    def release(self, li: int, write: bool) -> None:
        """Write block ``li`` to its shard (``write``) and move its parameters back to meta."""
        layers = self.adapter.get_layers(self.model)
        block = layers[li]
        if write and self.writer:
            state = {f"{self._prefix(li)}{k}": v for k, v in block.state_dict().items() if v.device.type != "meta"}
            name = self.shard_name(li)
            self.bytes_written += write_tensors(self.tmp / name, state)
            self.weight_map.update({k: name for k in state})
            del state
        if write:
            self.written.add(li)
        _to_meta(block)
        trim_heap()


def _owner(root: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, attr = name.rpartition(".")
    return (root.get_submodule(path) if path else root), attr


def _to_meta(block: nn.Module) -> None:
    """Replace every parameter of ``block`` by a meta tensor of the same shape (buffers stay)."""
    for module in block.modules():
        for attr, p in list(module._parameters.items()):
            if p is not None and p.device.type != "meta":
                module._parameters[attr] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=False)


def store_of(model: nn.Module) -> LayerStore | None:
    """The :class:`LayerStore` of a model from :func:`open_offloaded` (``None`` for an ordinary
    in-memory model). For the API and this module: methods get it as ``Runtime.blocks``."""
    return getattr(model, _ATTR, None)


def _resolve(name_or_path: str) -> Path:
    """A local checkpoint directory for ``name_or_path`` (a hub id is downloaded, safetensors only)."""
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        return p
    if name_or_path.startswith((".", "/", "~")) or p.suffix:
        require_dir(name_or_path)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name_or_path, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
    except Exception as exc:  # offline, unknown id, ...
        raise FileNotFoundError(f"cannot fetch {name_or_path!r} from the hub ({exc}); pass a local directory") from exc


def _dtype_of(config: Any, dtype: torch.dtype | str | None) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    name = dtype or getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32"
    return to_torch_dtype(name, context=" for offloaded compression")


def open_offloaded(
    name_or_path: str | os.PathLike,
    out: str | os.PathLike,
    activations: str = "disk",
    dtype: torch.dtype | str | None = None,
    overwrite: bool = False,
    writer: bool = True,
) -> nn.Module:
    """A model skeleton whose blocks load lazily from ``name_or_path`` and are written to ``out``.

    Only the global tensors (embeddings, final norm, head) are read now. The
    temporary output directory is created beside ``out`` (removed again by
    :func:`discard` on failure). ``writer=False`` (torchrun ranks other than 0)
    computes the same blocks but writes nothing. Use with
    :func:`slimformer.api.compress_offloaded`.
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..io.inputs import check_checkpoint_files
    from ..io.outputs import (check_free_space, check_not_input, check_output_dir, make_parents, make_temp_dir,
                              remove_dirs)

    if activations not in ACTIVATION_MODES:
        raise ValueError(f"offload must be one of {', '.join(ACTIVATION_MODES)}, got {activations!r}")
    out_path = check_output_dir(out, overwrite, inputs=(name_or_path,)).absolute()
    src = _resolve(str(name_or_path))
    check_not_input(out_path, (src,))  # a hub id resolves to a local snapshot
    if writer:  # the output is at most the size of the dense checkpoint (+ metadata)
        check_free_space(out_path, sum(f.stat().st_size for f in src.glob("*.safetensors")), "the compressed model")
    check_checkpoint_files(src)  # a truncated shard is named now, not after hours of work
    config = AutoConfig.from_pretrained(str(src))
    if isinstance(getattr(config, "slimformer", None), dict):
        raise ValueError(f"{src} is already a slimformer-compressed model; offloaded compression starts from a "
                         "dense Hugging Face checkpoint")
    torch_dtype = _dtype_of(config, dtype)
    source_prefix = "model"
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    adapter = get_adapter(model)
    source = CheckpointSource(src, getattr(model, "base_model_prefix", source_prefix) or source_prefix)
    _load_globals(model, adapter, source, torch_dtype)
    model.eval()
    created = make_parents(out_path)  # ranks that do not write keep their scratch there too
    try:
        tmp = make_temp_dir(out_path)
        store = LayerStore(model, adapter, source, out_path, tmp, activations, torch_dtype, writer)
    except BaseException:
        remove_dirs(created)
        raise
    store.created_parents = created
    setattr(model, _ATTR, store)
    model.name_or_path = str(name_or_path)
    logger.info("offloaded %s: %d blocks load lazily from %s; output shards go to %s",
                config.model_type, store.n_layers, src, tmp)
    return model


def _load_globals(model: nn.Module, adapter: ArchAdapter, source: CheckpointSource, dtype: torch.dtype) -> None:
    """Read every parameter outside the decoder blocks; tie the head when the checkpoint has none."""
    block_prefix = adapter.layers + "."
    head_name = adapter.head + ".weight"
    names = [n for n, _ in model.named_parameters(remove_duplicate=False) if not n.startswith(block_prefix)]
    wanted = [n for n in names if source.key(n) is not None or n != head_name]
    tensors = source.read(wanted, torch.device("cpu"), dtype)
    for name, t in tensors.items():
        owner, attr = _owner(model, name)
        owner._parameters[attr] = nn.Parameter(t, requires_grad=False)
    if head_name not in tensors:  # tied head stored once
        head, emb = model.get_submodule(adapter.head), model.get_submodule(adapter.embed)
        head.weight = emb.weight
    elif getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()


def finish(model: nn.Module, section: dict[str, Any], report: dict[str, Any] | None, tokenizer: Any = None) -> Path:
    """Write the global tensors, index, config, runtime file and report; commit the directory."""
    from ..io import format as fmt
    from ..core.plan import FORMAT_VERSION

    store = store_of(model)
    if store is None:
        raise ValueError("not an offloaded model")
    todo = sorted(set(range(store.n_layers)) - store.written)
    if todo:
        raise RuntimeError(f"blocks {todo} were never compressed/written; the output would be incomplete")
    state = {k: v for k, v in fmt.untied_state(model).items() if not k.startswith(store.adapter.layers + ".")}
    name = store.shard_name(store.n_layers)
    total = store.bytes_written + write_tensors(store.tmp / name, state)
    store.weight_map.update({k: name for k in state})
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(store.weight_map.items()))}
    (store.tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    if store.scratch is not None:
        shutil.rmtree(store.scratch, ignore_errors=True)
    section = {"format_version": FORMAT_VERSION, **section, "plain": False}
    fmt.write_metadata(model, store.tmp, section, report, tokenizer)
    fmt.commit_dir(store.tmp, store.out)
    delattr(model, _ATTR)
    logger.info("saved compressed model to %s (%.2f MB of weights, %d shards)", store.out, total / 2**20,
                store.n_layers + 1)
    return store.out


def discard(model: nn.Module) -> None:
    """Remove what is left of an offloaded run's temporary directory (after a failure,
    or a rank that does not write) and detach the store; a no-op after :func:`finish`."""
    store = store_of(model)
    if store is not None:
        from ..io.outputs import remove_dirs

        shutil.rmtree(store.tmp, ignore_errors=True)
        remove_dirs(store.created_parents)
        delattr(model, _ATTR)
