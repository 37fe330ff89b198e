"""OpenVINO on the CPU: a torch module converted to OpenVINO IR once per input shape, kept on disk, and
compiled from its path with OpenVINO's blob cache, so that a later start loads it in seconds.

Conversion (`openvino.convert_model` over the torch module, then `save_model`) bakes the weights in:
the IR is keyed by the model's identity (checkpoint, patches, options), the input shapes and the
OpenVINO version. It is saved uncompressed: `save_model` would round the weights to fp16 otherwise; weights the module stores in fp16 or bf16 and casts
in its forward stay so in the IR (half the disk), cast by the graph.
A model compiled from its .xml path (not from the in-memory model) is what OpenVINO's CACHE_DIR keys
its compiled blob by.

With weights "int8", NNCF's weight compression (8-bit asymmetric, one scale and zero point per output
channel, as optimum-intel's int8 export) turns the IR's matrix and convolution weights into uint8 before
it is saved; the CPU plugin decompresses them as it computes, so the compiled model holds a quarter of
the fp32 weights' memory (the activations keep the precision below).

Precision is OpenVINO's INFERENCE_PRECISION_HINT: "f32", or "bf16", which OpenVINO picks by default on
CPUs with bf16 units (avx512_bf16 or AMX) and emulates slowly elsewhere.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path

import torch

from .. import mapped_weights
from .call_key import call_key
from .openvino_graph import fold_weight_slices

log = logging.getLogger(__name__)

INSTALL_HINT = ('install it into ComfyUI\'s Python: pip install "openvino>=2026.4" '
                '(or pip install "add-turbo[openvino]"), then restart ComfyUI')
NNCF_HINT = ('cpu_backend openvino_int8 compresses the weights with NNCF: pip install "nncf>=3.4" into ComfyUI\'s '
             'Python (or pip install "add-turbo[openvino]"), then restart ComfyUI')
PRECISIONS = ("f32", "bf16")
WEIGHT_FORMATS = ("as_module", "int8")  # the IR's weights: the module's own dtype, or NNCF's int8
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # /proc/cpuinfo flags of CPUs with bf16 dot products


def missing(weights: str = "as_module") -> str | None:
    """Why OpenVINO (and, for int8 weights, NNCF) cannot be used here (with the fix), or None."""
    try:
        import openvino  # noqa: F401
    except ImportError as error:
        return f"OpenVINO is not installed ({error}): {INSTALL_HINT}"
    if weights == "int8":
        try:
            import nncf  # noqa: F401
        except ImportError as error:
            return f"NNCF is not installed ({error}): {NNCF_HINT}"
    return None


def version() -> str:
    import openvino

    return openvino.get_version().split("-")[0]


def cpu_flags(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> frozenset:
    """The CPU's feature flags as the kernel reports them (empty where there is no such file)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    line = next((ln for ln in text.splitlines() if ln.startswith(("flags", "Features"))), "")
    return frozenset(line.partition(":")[2].split())


def has_bf16_units(flags: frozenset) -> bool:
    """Whether a CPU with these flags computes bf16 dot products in hardware (avx512_bf16 or AMX)."""
    return bool(flags & BF16_FLAGS)


def compress_int8(model):
    """`model` (an openvino.Model) with its matrix and convolution weights in NNCF's int8 (asymmetric, per
    output channel); the graph decompresses them where they are used."""
    import nncf
    from nncf.common.logging.logger import set_log_level

    set_log_level(logging.WARNING)  # NNCF's progress bars and statistics tables would flood ComfyUI's log
    return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)


def convert(module: torch.nn.Module, example_inputs: tuple, xml_path: Path, weights: str = "as_module") -> None:
    """Convert `module` called on `example_inputs` (tensors, the shapes to fix) to IR at `xml_path`
    (+ .bin), its weights as the module holds them or, with weights "int8", compressed by NNCF. Written to
    a temporary name first: a crash never leaves a half-written model behind."""
    import openvino as ov

    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"weights must be one of {WEIGHT_FORMATS}, got {weights!r}")
    with torch.inference_mode(False), torch.no_grad():  # the converter traces with autograd's machinery
        model = ov.convert_model(module, example_input=tuple(t.clone() for t in example_inputs))
    model.reshape({port: list(t.shape) for port, t in zip(model.inputs, example_inputs, strict=True)})  # static
    fold_weight_slices(model)  # sliced weights as weights of their own: int8 compresses them too
    if weights == "int8":
        model = compress_int8(model)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    partial = xml_path.with_name(f"{xml_path.stem}.{os.getpid()}.{threading.get_ident()}.partial.xml")
    ov.save_model(model, str(partial), compress_to_fp16=False)
    del model
    partial.with_suffix(".bin").replace(xml_path.with_suffix(".bin"))
    partial.replace(xml_path)
    gc.collect()  # the traced graph and the IR's weights: freed before the next part converts
    mapped_weights.trim_heap()


class StaticModel:
    """One compiled OpenVINO model for one set of input shapes: call it with torch tensors, get torch
    tensors (fp32, CPU) back. Inference requests are not thread-safe: each call holds a lock."""

    def __init__(self, xml_path: Path, precision: str, blob_cache: Path | None, threads: int | None = None):
        import openvino as ov

        if precision not in PRECISIONS:
            raise ValueError(f"OpenVINO precision must be one of {PRECISIONS}, got {precision!r}")
        config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        if blob_cache is not None:
            # One folder per precision: OpenVINO 2026.4's blob key leaves the precision hint out, and a bf16
            # compile that loads the f32 blob of the same IR computes NaNs.
            config["CACHE_DIR"] = str(Path(blob_cache) / precision)
        began = time.perf_counter()
        core = ov.Core()
        self.compiled = core.compile_model(str(xml_path), "CPU", config)
        if blob_cache is not None and not self.compiled.get_property("LOADED_FROM_CACHE"):
            # Compiled from the IR, the model keeps the transformed graph's weights beside its own (3 GiB
            # more on SDXL's UNet); imported from the blob it has just written, it holds its own only.
            self.compiled = None
            gc.collect()
            mapped_weights.trim_heap()
            self.compiled = core.compile_model(str(xml_path), "CPU", config)
        self.compile_s = time.perf_counter() - began
        # The compiled model holds its own copy of the weights: the IR's and the blob's mapped pages go back
        # to the kernel (read again from the file if OpenVINO ever needs them).
        self.released = sum(mapped_weights.release_files_under(folder) for folder in
                            (xml_path.parent, *(() if blob_cache is None else (Path(blob_cache),))))
        self.request = self.compiled.create_infer_request()
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")  # what OpenVINO computes in
        self.precision = hint.get_type_name()  # "f32", "bf16"
        self.lock = threading.Lock()

    def __call__(self, *inputs: torch.Tensor):
        arrays = [t.detach().to("cpu", torch.float32).contiguous().numpy() for t in inputs]
        with self.lock:
            results = self.request.infer(arrays)
            outputs = [torch.from_numpy(results[out].copy()) for out in self.compiled.outputs]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


class _TensorsOnly(torch.nn.Module):
    """fn with its non-tensor options bound, returning its tensors as a flat tuple (what OpenVINO takes).
    `owner`, the module whose weights fn reads, is registered as a submodule: the tracer then takes its
    parameters as weights, not as constants (which it refuses where they require grad)."""

    def __init__(self, fn, owner: torch.nn.Module, positional: int, names: tuple, options: dict):
        super().__init__()
        self.fn, self.owner, self.positional, self.names, self.options = fn, owner, positional, names, options

    def forward(self, *tensors):
        out = self.fn(*tensors[:self.positional], **dict(zip(self.names, tensors[self.positional:], strict=True)),
                      **self.options)
        return tuple(t for t in _flat(out) if t is not None)


def _flat(out) -> list:
    return list(out) if isinstance(out, (tuple, list)) else [out]


class OpenVINOCall:
    """fn(*tensors, **options), which computes with `module`'s weights, run by OpenVINO: converted once per
    input (shapes and options) to IR in
    `folder`, compiled with the blob cache, and called with torch tensors like fn. Tensor keyword
    arguments are inputs; other keyword arguments (ints, None, strings) are part of the key. Outputs
    keep fn's structure (a tensor, or a tuple with None where fn returns None), recorded beside the IR.

    fn runs directly instead when an argument is neither a tensor nor hashable, and for good once a
    conversion or compilation has failed (`failure` says why, logged once).

    `lighter`, if given, is a context manager factory active while fn is converted: it may swap layers for
    ones that compute the same with less work (add_turbo.acceleration.lighter_layers). `ready`, if given,
    is called with the IR's path once it is on disk (converted now or before), before it is compiled: the
    torch weights it was made from can leave memory then. `weights` is convert's (the caller keeps int8
    IR in a folder of its own).
    """

    def __init__(self, fn, module: torch.nn.Module, name: str, folder: Path, precision: str, blob_cache: Path | None,
                 threads: int | None = None, lighter=None, ready=None, weights: str = "as_module"):
        self.fn, self.module, self.name, self.folder, self.lighter = fn, module, name, Path(folder), lighter
        self.ready, self.weights = ready, weights
        self.precision, self.blob_cache, self.threads = precision, blob_cache, threads
        self.models: dict = {}  # key -> (StaticModel, output structure)
        self.failure: str | None = None
        self.runs = collections.Counter()  # "openvino", "direct", "converted", "loaded"

    def file_for(self, key) -> Path:
        """The IR file of one key: the shapes in the name, the options hashed (stable across processes)."""
        shapes = "_".join("x".join(map(str, shape)) or "scalar" for shape, _, _ in key[0])
        digest = hashlib.sha256(repr(key).encode()).hexdigest()[:10]
        return self.folder / f"{self.name.replace(' ', '_')}-{shapes}-{digest}.xml"

    def __call__(self, *args, **kwargs):
        key, inputs = call_key(args, kwargs)
        entry = None if key is None or self.failure is not None else self.models.get(key) or self._load(key, args, kwargs)
        if entry is None:
            self.runs["direct"] += 1
            return self.fn(*args, **kwargs)
        model, structure = entry
        outputs = iter(_flat(model(*inputs)))
        dtype = inputs[0].dtype
        restored = [None if kind is None else next(outputs).to(dtype) for kind in structure["outputs"]]
        self.runs["openvino"] += 1
        return restored[0] if structure["single"] else tuple(restored)

    def _load(self, key, args, kwargs):
        xml = self.file_for(key)
        sidecar = xml.with_suffix(".json")
        try:
            if not (xml.exists() and sidecar.exists()):
                _, positional, names, options = key
                module = _TensorsOnly(self.fn, self.module, positional, names, dict(options)).eval()
                # Copies outside inference mode: tracing needs ordinary tensors, and some host layers add
                # into their input in place (the caller's tensors must stay as they are).
                with torch.inference_mode(False), torch.no_grad():
                    inputs = [t.clone() for t in (*args, *(kwargs[k] for k in names))]
                    sample = module.fn(*[t.clone() for t in inputs[:positional]],
                                       **{k: t.clone() for k, t in zip(names, inputs[positional:], strict=True)},
                                       **dict(options))
                structure = {"single": not isinstance(sample, (tuple, list)),
                             "outputs": [None if t is None else "tensor" for t in _flat(sample)]}
                with self.lighter() if self.lighter else contextlib.nullcontext():
                    convert(module, tuple(inputs), xml, self.weights)
                sidecar.write_text(json.dumps(structure))
                self.runs["converted"] += 1
            else:
                structure = json.loads(sidecar.read_text())
                self.runs["loaded"] += 1
            if self.ready is not None:
                self.ready(xml)
            model = StaticModel(xml, self.precision, self.blob_cache, self.threads)
        except Exception as error:  # noqa: BLE001 (any converter or runtime error: fn runs directly from now on)
            self.failure = f"OpenVINO could not convert or compile {self.name} ({type(error).__name__}: {str(error)[:200]})"
            log.warning("ADD Turbo OpenVINO: %s; it runs in torch from now on", self.failure)
            return None
        self.models[key] = (model, structure)
        return self.models[key]
