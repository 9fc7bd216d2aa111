"""Configuration of FASP (the knobs shared with the structured pruning baselines live in
:mod:`slimformer.methods._shared.pruning_config`)."""

from __future__ import annotations

from dataclasses import dataclass

from .._shared.pruning_config import SHARED_ATTRIBUTES, PruningConfig


@dataclass
class FASPConfig(PruningConfig):
    no_restore: bool = False

    method = "fasp"

    @property
    def restores(self) -> bool:
        return not self.no_restore


FASPConfig.__doc__ = """FASP (Hu et al., 2025): Wanda-style column scores + least-squares restoration.
""" + SHARED_ATTRIBUTES + """        no_restore: skip the restoration (then FASP equals the wanda-sp baseline).
"""


__all__ = ["FASPConfig", "PruningConfig", "SHARED_ATTRIBUTES"]
