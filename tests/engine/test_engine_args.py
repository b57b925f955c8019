"""EngineArgs checks every field once, at construction, with an error that names it."""

from __future__ import annotations

import pytest

from helix import EngineArgs


@pytest.mark.parametrize(("field", "value"), [
    ("model", ""), ("device", "tpu"), ("dtype", "float8"), ("load_format", "pickle"), ("max_model_len", 0),
    ("block_size", 12), ("block_size", 0), ("num_kv_blocks", 0), ("gpu_memory_utilization", 0.0),
    ("gpu_memory_utilization", 1.5), ("cpu_kv_cache_gib", 0.0), ("swap_space", -1.0),
])
def test_each_bad_value_names_its_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"^{field}: "):
        EngineArgs(**{field: value})


def test_defaults_and_good_values_pass() -> None:
    EngineArgs()
    EngineArgs(model="m", device="cuda:1", dtype="bfloat16", load_format="dummy", max_model_len=64, block_size=32,
               num_kv_blocks=8, gpu_memory_utilization=1.0, swap_space=0.0)
