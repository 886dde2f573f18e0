"""A stand-in for the `tensorrt` module, enough for `trt/build.py` and `trt/timing_cache.py` to run on CPU.

It records what the build asked for (flags cleared, profile shapes, pool limits) and keeps timing caches as
JSON ({"key": GPU and version, "entries": [...]}) so merging and mismatches can be checked. It builds nothing:
the real thing runs in tests/trt/test_gpu.py on a GPU machine. Install with `install(monkeypatch)`.
"""

from __future__ import annotations

import json
import sys
import types


class Cache:
    """ITimingCache: entries measured on one GPU/TensorRT (`key`)."""

    def __init__(self, key: str, entries=()):
        self.key, self.entries = key, set(entries)

    def combine(self, other: "Cache", ignore_mismatch: bool) -> bool:
        if other.key != self.key and not ignore_mismatch:
            return False
        self.entries |= other.entries
        return True

    def serialize(self) -> bytes:
        return json.dumps({"key": self.key, "entries": sorted(self.entries)}).encode()


class Config:
    """IBuilderConfig on a GPU/TensorRT named `key`."""

    def __init__(self, key: str):
        self.key, self.cleared, self.pools, self.profiles, self.cache = key, [], {}, [], None
        self.builder_optimization_level, self.profiling_verbosity = 3, None

    def create_timing_cache(self, data: bytes) -> Cache:
        if not data:
            return Cache(self.key)
        try:
            parsed = json.loads(bytes(data))
        except ValueError:
            raise RuntimeError("timing cache: bad magic") from None
        return Cache(parsed["key"], parsed["entries"])

    def set_timing_cache(self, cache: Cache, ignore_mismatch: bool) -> bool:
        if cache.key != self.key and not ignore_mismatch:
            return False
        self.cache = cache
        return True

    def get_timing_cache(self) -> Cache | None:
        return self.cache

    def clear_flag(self, flag) -> None:
        self.cleared.append(flag)

    def set_memory_pool_limit(self, pool, size: int) -> None:
        self.pools[pool] = size

    def add_optimization_profile(self, profile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1


class Profile:
    def __init__(self):
        self.shapes = {}

    def set_shape(self, name, min, opt, max) -> None:  # noqa: A002 - TensorRT's own argument names
        self.shapes[name] = (tuple(min), tuple(opt), tuple(max))


class Builder:
    """Builds a fake engine: its bytes name the inputs; the build measures one tactic per input name."""

    gpu_key = "fake-gpu"
    built: list = []

    def __init__(self, logger):
        self.logger = logger

    def create_network(self, flags: int):
        return types.SimpleNamespace(flags=flags, names=[], num_inputs=0)

    def create_builder_config(self) -> Config:
        return Config(Builder.gpu_key)

    def create_optimization_profile(self) -> Profile:
        return Profile()

    def build_serialized_network(self, network, config: Config) -> bytes:
        config.cache.entries |= {f"tactic:{name}" for name in network.names}
        Builder.built.append((network, config))
        return b"ENGINE:" + ",".join(network.names).encode()


class OnnxParser:
    """Parses nothing but the graph's input names (with the onnx package) into the network."""

    def __init__(self, network, logger):
        self.network = network

    def parse_from_file(self, path: str) -> bool:
        import onnx

        names = [i.name for i in onnx.load(path, load_external_data=False).graph.input]
        self.network.names = names
        self.network.num_inputs = len(names)
        self.network.get_input = lambda i: types.SimpleNamespace(name=names[i])
        return True

    num_errors = 0


def install(monkeypatch, version: str = "10.13.0.35", gpu_key: str = "fake-gpu") -> types.ModuleType:
    """Put the fake module in sys.modules as `tensorrt` for one test."""
    module = types.ModuleType("tensorrt")
    module.__version__ = version
    module.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level=None: None})
    module.Builder, module.OnnxParser = Builder, OnnxParser
    module.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=2)
    module.BuilderFlag = types.SimpleNamespace(TF32="TF32")
    module.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    module.ProfilingVerbosity = types.SimpleNamespace(DETAILED="DETAILED")
    Builder.gpu_key, Builder.built = gpu_key, []
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    return module
