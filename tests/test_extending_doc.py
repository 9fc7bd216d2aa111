"""docs/extending.md's worked example runs: its files make a method package that registers
itself, compresses a tiny model and is found by the registry by its exact config type."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from tiny_models import make_model

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.fixture
def example_package(tmp_path: Path):
    """The doc's ``# mlpnorm/<file>`` blocks written as a package on ``sys.path``; unregistered after."""
    from slimformer.methods import METHODS

    files = {}
    for block in _python_blocks():
        first = block.splitlines()[0]
        if first.startswith("# mlpnorm/"):
            files[first[2:].strip()] = block
    assert set(files) == {"mlpnorm/__init__.py", "mlpnorm/config.py", "mlpnorm/apply.py"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    sys.path.insert(0, str(tmp_path))
    try:
        yield
    finally:
        sys.path.remove(str(tmp_path))
        for mod in [m for m in sys.modules if m == "mlpnorm" or m.startswith("mlpnorm.")]:
            del sys.modules[mod]
        METHODS.pop("mlp-norm", None)


def test_worked_example_registers_and_compresses(example_package) -> None:
    import slimformer as sf
    from slimformer.methods import get_method, method_names, spec_for_config

    import mlpnorm

    assert "mlp-norm" in method_names()
    spec = get_method("mlp-norm")
    assert spec.config_cls is mlpnorm.MLPNormConfig and not spec.needs_calibration
    assert spec_for_config(mlpnorm.MLPNormConfig(sparsity=0.5)) is spec
    with pytest.raises(ValueError, match="sparsity"):
        mlpnorm.MLPNormConfig(sparsity=1.5)

    usage = [b for b in _python_blocks() if "sf.compress" in b]
    assert len(usage) == 1
    model = make_model("llama")
    intermediate = model.config.intermediate_size
    namespace = {"model": model}
    exec(compile(usage[0], str(DOC), "exec"), namespace)
    report = namespace["result"].report
    assert report["method"] == "mlp-norm"
    assert report["kept_mlp"] == [intermediate // 2] * model.config.num_hidden_layers
    assert report["params_after"] == sf.count_params(model) < report["params_before"]


def test_registry_rejects_a_taken_name_or_config() -> None:
    from dataclasses import dataclass

    from slimformer.methods import METHODS, SliceGPTConfig, register_method

    @dataclass
    class Other:
        sparsity: float = 0.1

    with pytest.raises(ValueError, match="already registered"):
        register_method("slicegpt", Other, "x:y")
    with pytest.raises(ValueError, match="already the config"):
        register_method("slicegpt-2", SliceGPTConfig, "x:y")
    assert "slicegpt-2" not in METHODS
    assert register_method("slicegpt", SliceGPTConfig, METHODS["slicegpt"].apply_ref,
                           offload=True) is METHODS["slicegpt"]  # the same entry again: a no-op


def test_spec_for_config_matches_the_exact_type() -> None:
    from dataclasses import dataclass

    from slimformer.methods import SliceGPTConfig, spec_for_config

    @dataclass
    class Sub(SliceGPTConfig):
        pass

    assert spec_for_config(SliceGPTConfig(sparsity=0.1)).name == "slicegpt"
    with pytest.raises(TypeError, match="not a registered method config"):
        spec_for_config(Sub(sparsity=0.1))
