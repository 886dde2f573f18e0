"""A stand-in for the `tensorrt` module, enough for `trt/build.py`, `trt/timing_cache.py` and the set-up of
`runtime/tensorrt_backend.py` to run on CPU.

It records what the build asked for (flags cleared, profile shapes, pool limits, the graph the parser got, the
logger each object was given) and keeps timing caches as JSON ({"key": GPU and version, "entries": [...]}) so
merging and mismatches can be checked; its Runtime deserialises an engine whose execution contexts record how
they were created and what device memory they were given. It builds and runs nothing: the real thing runs in
tests/trt/test_gpu.py on a GPU machine. Install with `install(monkeypatch)`.
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

    refuse_profiles = False  # a test sets it: TensorRT returns -1 for a profile it finds invalid

    def add_optimization_profile(self, profile) -> int:
        if Config.refuse_profiles:
            return -1
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
    loggers: list = []  # the logger every Builder, Runtime and OnnxParser was given, in order

    def __init__(self, logger):
        self.logger = logger
        Builder.loggers.append(logger)

    def create_network(self, flags: int):
        return types.SimpleNamespace(flags=flags, names=[], num_inputs=0)

    def create_builder_config(self) -> Config:
        return Config(Builder.gpu_key)

    def create_optimization_profile(self) -> Profile:
        return Profile()

    def build_serialized_network(self, network, config: Config) -> bytes:
        config.cache.entries |= {f"tactic:{name}" for name in network.names}
        Builder.built.append((network, config))
        Builder.serialized = b"ENGINE:" + ",".join(network.names).encode()
        return Builder.serialized


class OnnxParser:
    """Parses nothing but the graph's input names (with the onnx package) into the network; keeps the graph it
    was given (`OnnxParser.parsed`: (onnx.ModelProto, path))."""

    parsed: list = []

    def __init__(self, network, logger):
        self.network, self.logger = network, logger
        Builder.loggers.append(logger)

    def parse_from_file(self, path: str) -> bool:
        import onnx

        return self._read(onnx.load(path, load_external_data=False), path)

    def parse(self, model: bytes, path: str | None = None) -> bool:
        import onnx

        return self._read(onnx.load_from_string(bytes(model)), path)

    def _read(self, model, path) -> bool:
        OnnxParser.parsed.append((model, path))
        names = [i.name for i in model.graph.input]
        self.network.names = names
        self.network.num_inputs = len(names)
        self.network.get_input = lambda i: types.SimpleNamespace(name=names[i])
        return True

    num_errors = 0


class Context:
    """IExecutionContext: how it was created and the device memory it was given."""

    def __init__(self, strategy):
        self.strategy, self.memory = strategy, None

    def set_device_memory(self, memory: int, size: int) -> None:
        self.memory = (memory, size)


class Engine:
    """ICudaEngine of a classification model: pixel_values (profile 1..4) in, logits out."""

    device_memory_size_v2 = 12345
    num_io_tensors = 2

    def __init__(self):
        self.contexts: list[Context] = []

    def get_tensor_name(self, i: int) -> str:
        return ["pixel_values", "logits"][i]

    def get_tensor_mode(self, name: str):
        return "INPUT" if name == "pixel_values" else "OUTPUT"

    def get_tensor_dtype(self, name: str):
        return types.SimpleNamespace(name="FLOAT")

    def get_tensor_profile_shape(self, name: str, profile: int):
        return [(1, 3, 64, 64), (2, 3, 64, 64), (4, 3, 64, 64)]

    def create_execution_context(self, strategy="STATIC") -> Context:
        self.contexts.append(Context(strategy))
        return self.contexts[-1]


class Runtime:
    def __init__(self, logger):
        self.logger = logger
        Builder.loggers.append(logger)

    def deserialize_cuda_engine(self, data: bytes) -> Engine:
        return Engine()


def install(monkeypatch, version: str = "10.13.0.35", gpu_key: str = "fake-gpu") -> types.ModuleType:
    """Put the fake module in sys.modules as `tensorrt` for one test."""
    module = types.ModuleType("tensorrt")
    module.__version__ = version
    module.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level=None: None})
    module.Builder, module.OnnxParser, module.Runtime = Builder, OnnxParser, Runtime
    module.ExecutionContextAllocationStrategy = types.SimpleNamespace(STATIC="STATIC", USER_MANAGED="USER_MANAGED")
    module.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    module.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=2)
    module.BuilderFlag = types.SimpleNamespace(TF32="TF32")
    module.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    module.ProfilingVerbosity = types.SimpleNamespace(DETAILED="DETAILED")
    Builder.gpu_key, Builder.built, Builder.loggers, OnnxParser.parsed = gpu_key, [], [], []
    Config.refuse_profiles = False
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    return module
