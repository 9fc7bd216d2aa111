"""Configuration of MoDeGPT."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ...validate import SCHEDULE_NAMES, check_budget, check_schedule

if TYPE_CHECKING:
    from ...schedule import Schedule

MODULES = ("mlp", "qk", "vo")


@dataclass
class MoDeGPTConfig:
    """MoDeGPT (Lin et al., ICLR 2025): per-block module decompositions with no gradients.

    Give exactly one of ``sparsity`` or ``target_params``.

    Attributes:
        sparsity: mean fraction of each module's inner dimension removed (MLP channels,
            q/k head dims, value head dims), in [0, 1); the schedule spreads it over layers.
        target_params: fraction of the model's *parameters* to remove, in (0, 1): the mean
            fraction is found by bisection on the exact parameter count.
        modules: comma-separated modules to compress: mlp (Type I, Nystrom), qk (Type II,
            CR with whole RoPE pairs), vo (Type III, SVD).
        ridge: relative ridge of the Type I leverage scores, lambda = ridge * mean(diag C)
            (the paper leaves it open; implementations use 1e-4..1e-2).
        damping: relative ridge added to the Gram matrices of the Type I restoration and of the
            Type III Cholesky factor.
        schedule: per-layer allocation: global (the paper's softmax of -BI / temperature,
            default), uniform or layer-redundancy; the same fraction for a layer's three modules.
        temperature: global allocation temperature epsilon (the paper leaves it open; 0.15).
        max_layer_sparsity: global allocation cap on any layer's fraction, in (0, 1).
    """

    sparsity: float | None = None
    target_params: float | None = None
    modules: str = "mlp,qk,vo"
    ridge: float = 1e-2
    damping: float = 0.01
    schedule: str = field(default="global", metadata={"choices": SCHEDULE_NAMES})
    temperature: float = 0.15
    max_layer_sparsity: float = 0.8

    method = "modegpt"

    def __post_init__(self) -> None:
        self.sparsity, self.target_params = check_budget(
            self.method, self.sparsity, self.target_params, "fraction of each module's inner dimension")
        mods = [m.strip() for m in str(self.modules).split(",") if m.strip()]
        bad = [m for m in mods if m not in MODULES]
        if bad or not mods or len(set(mods)) != len(mods):
            raise ValueError(f"modules must be a comma-separated subset of {','.join(MODULES)}, got {self.modules!r}")
        self.modules = ",".join(m for m in MODULES if m in mods)
        for name in ("ridge", "damping"):
            if not float(getattr(self, name)) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        check_schedule(self.schedule)
        if self.schedule == "global":  # the settings make_schedule() passes on (torch-free check)
            check_schedule(self.schedule, temperature=self.temperature, max_layer_sparsity=self.max_layer_sparsity)

    @property
    def module_set(self) -> frozenset[str]:
        return frozenset(self.modules.split(","))

    def touches(self) -> frozenset[str]:
        """What this method changes (see :meth:`slimformer.arch.ArchAdapter.refusal`): MLP channels
        (``mlp``), value dims (``vo``: ``values``), q/k dims (``qk``); never the residual stream."""
        return frozenset({"mlp": "mlp", "vo": "values", "qk": "qk"}[m] for m in self.module_set)

    def make_schedule(self) -> Schedule:
        """The :class:`slimformer.schedule.Schedule` these settings describe."""
        from ...schedule import make_schedule

        if self.schedule == "global":
            return make_schedule("global", temperature=self.temperature, max_layer_sparsity=self.max_layer_sparsity)
        return make_schedule(self.schedule)
