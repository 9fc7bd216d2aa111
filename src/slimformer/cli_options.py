"""Command-line options generated from the settings dataclasses (torch-free).

``compress`` gets one option per method config field (:func:`add_method_options`,
grouped across methods by option name) and ``finetune`` one per
:class:`~slimformer.finetune_config.FinetuneConfig` field (:func:`add_config_options`).
The help text is each field's entry under ``Attributes:`` in the class docstring plus its
default; field metadata may rename an option (``"option"``), keep old spellings as hidden
aliases (``"aliases"``), give choices (``"choices"``) or mark a comma-separated list
(``"list"``, with the accepted names in ``"choices_doc"``). So the CLI and the Python
API cannot drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from typing import Any


def flag(name: str) -> str:
    """``learning_rate`` -> ``--learning-rate``."""
    return "--" + name.replace("_", "-")


@dataclasses.dataclass
class MethodOption:
    """One generated ``compress`` option and the method config fields it sets.

    Config fields may name their option and its old spellings in their metadata:
    ``field(metadata={"option": "learning_rate", "aliases": ("lr",)})`` gives
    ``--learning-rate`` (shared with other methods' ``learning_rate`` fields) and a hidden
    ``--lr``; ``metadata={"choices": (...)}`` gives the option its choices.
    """

    name: str
    fields: dict[str, dataclasses.Field] = dataclasses.field(default_factory=dict)  # method -> field
    aliases: list[str] = dataclasses.field(default_factory=list)
    choices: list[str] = dataclasses.field(default_factory=list)


def option_name(f: dataclasses.Field) -> str:
    """The option (and ``argparse`` dest) of a method config field: its ``"option"`` metadata or its name."""
    return f.metadata.get("option", f.name)


def method_options() -> dict[str, MethodOption]:
    """Every method config field, grouped by option name, in registry order."""
    from .methods import METHODS

    options: dict[str, MethodOption] = {}
    for method, spec in METHODS.items():
        for f in dataclasses.fields(spec.config_cls):
            opt = options.setdefault(option_name(f), MethodOption(option_name(f)))
            opt.fields[method] = f
            opt.aliases += [a for a in f.metadata.get("aliases", ()) if a not in opt.aliases]
            opt.choices += [c for c in f.metadata.get("choices", ()) if c not in opt.choices]
    return options


def plain(text: str) -> str:
    """Docstring markup as plain text: ``:mod:`a.b``` -> a.b, ``:class:`~a.B``` -> B, ````x```` -> x, ``*x*`` -> x."""
    text = re.sub(r":\w+:`~[\w.]*?(\w+)`", r"\1", text)
    text = re.sub(r":\w+:`([^`]+)`", r"\1", text)
    text = re.sub(r"``([^`]+)``", r"\1", text)
    text = re.sub(r"`([^`]+)`", r"\1", text)
    return re.sub(r"(?<![\w*])\*(\w(?:[^*]*?\w)?)\*(?![\w*])", r"\1", text)


def attribute_docs(cls: type) -> dict[str, str]:
    """Each entry of the ``Attributes:`` sections of the docstrings of ``cls`` and its base
    classes (name -> plain text; a subclass's entry wins). A subclass documents only the
    fields it adds.

    A section ends at the first line indented no deeper than its ``Attributes:`` line
    (a paragraph or heading after it); ``a, b: text`` documents both ``a`` and ``b``.
    """
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if base is not object and "__doc__" in vars(base):
            docs.update(_own_attribute_docs(vars(base)["__doc__"]))
    return docs


def _own_attribute_docs(doc: str | None) -> dict[str, str]:
    """:func:`attribute_docs` of one docstring."""
    docs: dict[str, str] = {}
    section: int | None = None  # indentation of the current "Attributes:" line
    entry: int | None = None  # indentation of its entries
    current: list[str] = []
    for line in (doc or "").splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if stripped == "Attributes:":
            section, entry, current = indent, None, []
            continue
        if section is None or not stripped:
            continue
        if indent <= section:
            section, current = None, []
            continue
        m = re.match(r"^(\w+(?:, \w+)*)(?: \(.*?\))?: (.*)$", stripped)
        if m and (entry is None or indent <= entry):
            entry, current = indent, m.group(1).split(", ")
            for name in current:
                docs[name] = m.group(2)
        else:
            for name in current:
                docs[name] += " " + stripped
    return {k: plain(v).rstrip(".") for k, v in docs.items()}


def _grouped(values: dict[str, str]) -> list[tuple[str, list[str]]]:
    """``{method: text}`` -> ``[(text, sorted methods)]``, in order of first appearance."""
    groups: dict[str, list[str]] = {}
    for method, text in values.items():
        groups.setdefault(text, []).append(method)
    return [(text, sorted(methods)) for text, methods in groups.items()]


def _option_help(opt: MethodOption) -> str:
    """What the option means for each method that has it, and its defaults (``None``/``False`` omitted)."""
    from .methods import METHODS

    docs = {m: attribute_docs(METHODS[m].config_cls).get(f.name, "") for m, f in opt.fields.items()}
    text = "; ".join(f"{doc} [{', '.join(ms)}]".strip() for doc, ms in _grouped(docs))
    defaults = {m: f.default for m, f in opt.fields.items()
                if f.default is not dataclasses.MISSING and f.default is not None and f.default is not False}
    if defaults:
        shown = _grouped({m: str(v) for m, v in defaults.items()})
        if len(shown) == 1 and len(defaults) == len(opt.fields):
            text += f" (default {shown[0][0]})"
        else:
            text += " (default " + "; ".join(f"{v} for {', '.join(ms)}" for v, ms in shown) + ")"
    return text.replace("%", "%%")


def _annotation_type(f: dataclasses.Field) -> type:
    """Type of an option whose default is None, from its annotation ("int | None" -> int, "str | None" -> str)."""
    ann = str(f.type)
    return int if ann.startswith("int") else str if ann.startswith("str") else float


def add_method_options(p: argparse.ArgumentParser) -> None:
    """One option per method config field (see :class:`MethodOption`), old spellings as hidden aliases."""
    group = p.add_argument_group("method options (from the method config dataclasses; [methods they apply to])")
    for name, opt in method_options().items():
        f = next(iter(opt.fields.values()))
        default = f.default if f.default is not dataclasses.MISSING else None
        if isinstance(default, bool):
            kwargs: dict[str, Any] = {"action": "store_true"}
        else:
            # None default: the annotation says the type ("int | None" -> int, else float)
            kwargs = {"type": type(default) if default is not None else _annotation_type(f)}
            if opt.choices:
                kwargs["choices"] = opt.choices
        group.add_argument(flag(name), dest=name, default=None, help=_option_help(opt), **kwargs)
        for alias in opt.aliases:
            group.add_argument(flag(alias), dest=name, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)


def build_method_config(method: str, args: argparse.Namespace) -> Any:
    """Instantiate the method's config from the parsed options (validates on construction)."""
    from .methods import get_method

    spec = get_method(method)
    own = {option_name(f): f for f in dataclasses.fields(spec.config_cls)}  # option -> field
    given = {n: getattr(args, n) for n in method_options() if getattr(args, n, None) is not None}
    foreign = sorted(set(given) - set(own))
    if foreign:
        raise ValueError(f"option(s) {', '.join(flag(n) for n in foreign)} do not apply to method {method}")
    missing = [
        n for n, f in own.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and n not in given
    ]
    if missing:
        raise ValueError(f"method {method} needs {', '.join(flag(n) for n in missing)}")
    return spec.config_cls(**{own[n].name: v for n, v in given.items()})


def _config_type(f: dataclasses.Field) -> type:
    """Option type of a settings field: its default's type, else from the annotation ("int | None" -> int)."""
    if f.default is not None and f.default is not dataclasses.MISSING:
        return type(f.default)
    ann = str(f.type)
    return int if ann.startswith("int") else str if ann.startswith(("str", "tuple")) else float


def add_config_options(group: Any, cls: type) -> None:
    """One option per field of the settings dataclass ``cls`` (dest = the field name).

    Help from the ``Attributes:`` docs plus the default; field metadata as for method
    configs (``"option"``, hidden ``"aliases"``, ``"choices"``) and ``"list"`` (a
    comma-separated value, with the accepted names from ``"choices_doc"``).
    """
    docs = attribute_docs(cls)
    for f in dataclasses.fields(cls):
        kwargs: dict[str, Any] = {"type": _config_type(f)}
        if f.metadata.get("choices"):
            kwargs["choices"] = list(f.metadata["choices"])
        text = docs.get(f.name, "")
        if f.metadata.get("list"):
            names = f.metadata.get("choices_doc")
            text += "; comma-separated" + (f" among {','.join(names)}" if names else "")
        if f.default is None:
            text = text.replace("None: ", "default: ")  # the unset option keeps the config's None
        elif f.default is not dataclasses.MISSING:
            text += f" (default {f.default})"
        name = option_name(f)
        metavar = name.upper() if name != f.name else None
        group.add_argument(flag(name), dest=f.name, default=f.default, metavar=metavar,
                           help=text.replace("%", "%%"), **kwargs)
        for alias in f.metadata.get("aliases", ()):
            group.add_argument(flag(alias), dest=f.name, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)


def build_config(cls: type, args: argparse.Namespace) -> Any:
    """Instantiate the settings dataclass ``cls`` from options made by :func:`add_config_options`."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


__all__ = [
    "MethodOption", "add_config_options", "add_method_options", "attribute_docs", "build_config",
    "build_method_config", "flag", "method_options", "option_name", "plain",
]
