"""TensorRT INT8 calibration caches (TensorRT 7.x-10.x implicit quantization), in pure Python.

A calibration cache is what an ``IInt8Calibrator`` writes after calibrating and reads back to skip
calibration. Jetson builds (JetPack 6 = TensorRT 10.3) still use it: ``trtexec --int8 --calib=FILE`` or a
calibrator whose ``read_calibration_cache`` returns the file. The format is text::

    TRT-100300-EntropyCalibration2        header: TRT-<version as integer>-<algorithm>
    input: 3c010204                       <tensor name>: <8 hex digits>
    /conv1/Conv_output_0: 3d0b7086        (one line per tensor)

Each hex word is the big-endian IEEE-754 float32 bit pattern of the tensor's *scale*, in the tensor's
own units per int8 step: ``scale = amax / 127``, so TensorRT's dynamic range is ``[-127*scale,
127*scale]``. Tensor names may contain ':' and '/', so a line splits on its last ': ' (trtexec's own
reader, ``readScalesFromCalibrationCache`` in NVIDIA's ``samples/common/sampleEngines.cpp``, does the
same with the last ':' and the 8 characters two after it).

The version integer is TensorRT's ``NV_TENSORRT_VERSION``, whose formula changed with 10.0:

- TensorRT 7.x/8.x: ``major*1000 + minor*100 + patch`` (8.x ``NvInferRuntimeCommon.h``:
  ``kNV_TENSORRT_VERSION_IMPL = (NV_TENSORRT_MAJOR * 1000) + (NV_TENSORRT_MINOR * 100) +
  NV_TENSORRT_PATCH``). Caches in the wild read ``TRT-7000-``, ``TRT-7103-``, ``TRT-8502-``
  (8.5.2), ``TRT-8600-``; NVIDIA's TAO deploy writes ``major*1000 + minor*100 + patch``.
- TensorRT 10.x and later: ``major*10000 + minor*100 + patch`` (10.x ``NvInferRuntimeBase.h``:
  ``NV_TENSORRT_VERSION_INT(major, minor, patch) ((major) *10000L + (minor) *100L + (patch) *1L)``).
  JetPack 6 caches read ``TRT-100300-EntropyCalibration2``.
- TensorRT 9.x (LLM-only releases) is refused: which formula its caches carry is unverified.

TensorRT skips a cache whose header names another TensorRT version or another calibrator algorithm
(it logs "Calibration table does not match calibrator algorithm type" and recalibrates, which
``trtexec --calib`` cannot do: it has no data). TensorRT 11 removed calibrators entirely, so it reads no
cache at all; there INT8 comes only from Q/DQ nodes in the ONNX graph.

Exactness: a cache holds float32 scales, nothing else. A :class:`CalibrationCache` keeps each scale as
the Python float equal to that float32 value, so parse -> format reproduces the hex words bit for bit.
Converting ranges to a cache rounds ``amax / 127`` to float32 once; after that the scale bits are a fixed
point of ranges -> cache -> ranges -> cache.
"""

from __future__ import annotations

import math
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trtopt.artifacts import Ranges, TensorRange, inspect_onnx
from trtopt.errors import TrtoptError

ALGORITHMS = ("EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration", "LegacyCalibration")
"""Header names of TensorRT's calibrator algorithms (``CalibrationAlgoType``), as caches spell them."""

TRTEXEC_ALGORITHM = "EntropyCalibration2"
"""The only algorithm ``trtexec --calib`` accepts: its calibrator is an ``IInt8EntropyCalibrator2``."""

DEFAULT_TRT_VERSION = "10.3.0"
"""JetPack 6's TensorRT, the main consumer of calibration caches."""

_METHOD_ALGORITHMS = {
    "entropy": "EntropyCalibration2",
    "minmax": "MinMaxCalibration",
    # TensorRT reads only the scales from a cache; the header must merely name the calibrator the
    # build will use. Percentile and MSE ranges have no calibrator of their own, so they are written
    # for EntropyCalibration2, the calibrator trtexec and most samples use.
    "percentile": "EntropyCalibration2",
    "mse": "EntropyCalibration2",
    "auto": "EntropyCalibration2",  # a per-tensor mix of the methods above
    "tensorrt-cache": "EntropyCalibration2",
}

_CACHE_METHOD_PREFIX = "tensorrt-cache:"
_HEADER = re.compile(r"TRT-(?P<code>[0-9A-Za-z]+)-(?P<algorithm>[A-Za-z0-9]+)")
_HEX = re.compile(r"[0-9A-Fa-f]{8}")
_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?(?:\.\d+)?")
_UNNAMED_PREFIX = "(Unnamed "  # TensorRT-internal tensors, e.g. "(Unnamed Layer* 48) [Constant]_output"
_COMPUTE_OPS = {"Conv": (0,), "ConvTranspose": (0,), "MatMul": (0, 1), "Gemm": (0, 1)}
_FIRST_FEW = 5
_CONVERT_HINT = "trtopt cache convert"
_QDQ_HINT = "trtopt quantize --target tensorrt"


# ---------------------------------------------------------------------------------------- versions


def version_code(version: str) -> int:
    """TensorRT's version integer (``NV_TENSORRT_VERSION``) for a version string.

    "10.3.0" -> 100300, "10.16.0" -> 101600, "11.1.0" -> 110100 (``major*10000 + minor*100 + patch``);
    "8.6.1" -> 8601, "7.2.2" -> 7202 (``major*1000 + minor*100 + patch``). A missing patch is 0 and a
    fourth (build) number is ignored, so ``tensorrt.__version__`` strings such as "10.3.0.26" work.

    Raises TrtoptError for anything else, including 9.x (unverified encoding), minor >= 10 on 7.x/8.x
    and patch >= 100 (neither fits the integer).
    """
    m = _VERSION.fullmatch(str(version).strip())
    if not m:
        raise TrtoptError(f"TensorRT version {version!r} is not of the form MAJOR.MINOR.PATCH",
                          "write it like 10.3.0 (JetPack 6) or 8.6.1")
    major, minor, patch = int(m[1]), int(m[2]), int(m[3] or 0)
    if major in (7, 8):
        if minor > 9 or patch > 99:
            raise TrtoptError(f"TensorRT version {version} does not fit TensorRT {major}.x's version integer",
                              "check the version (minor 0-9, patch 0-99)")
        return major * 1000 + minor * 100 + patch
    if 10 <= major <= 99:
        if minor > 99 or patch > 99:
            raise TrtoptError(f"TensorRT version {version} does not fit TensorRT's version integer",
                              "check the version (minor and patch 0-99)")
        return major * 10000 + minor * 100 + patch
    raise TrtoptError(f"TensorRT version {version} has no calibration-cache version integer trtopt knows",
                      "use a 7.x, 8.x or 10.x-or-later version (9.x caches are not supported)")


def version_string(code: int) -> str:
    """The "MAJOR.MINOR.PATCH" string for a TensorRT version integer (the inverse of :func:`version_code`).

    7000-8999 decode as ``major*1000 + minor*100 + patch`` (8601 -> "8.6.1"); 100000-999999 as
    ``major*10000 + minor*100 + patch`` (100300 -> "10.3.0"). Anything else raises TrtoptError.
    """
    if isinstance(code, bool) or not isinstance(code, int):
        raise TrtoptError(f"TensorRT version integer {code!r} is not an integer", "pass e.g. 100300 for 10.3.0")
    if 7000 <= code <= 8999:
        return f"{code // 1000}.{code // 100 % 10}.{code % 100}"
    if 100000 <= code <= 999999:
        return f"{code // 10000}.{code // 100 % 100}.{code % 100}"
    raise TrtoptError(f"{code} is not a TensorRT version integer",
                      "use e.g. 100300 for 10.3.0 or 8601 for 8.6.1 (7.x/8.x: 4 digits, 10.x and later: 6)")


def _major(code: int) -> int:
    return code // 1000 if code < 10000 else code // 10000


# ---------------------------------------------------------------------------------------- the record


def _float32(x: float) -> float:
    """``x`` rounded to the nearest float32, as a Python float (exactly that float32's value)."""
    return struct.unpack(">f", struct.pack(">f", x))[0]


def _hex(scale: float) -> str:
    return struct.pack(">f", scale).hex()


@dataclass(frozen=True)
class CalibrationCache:
    """One TensorRT calibration cache: its header and its per-tensor scales.

    Attributes:
        trt_version: TensorRT version the cache is for, "MAJOR.MINOR.PATCH" (e.g. "10.3.0").
        version_code: the same as the header's integer (e.g. 100300); must agree with ``trt_version``.
        algorithm: calibrator algorithm named in the header, one of :data:`ALGORITHMS`.
        scales: tensor name -> scale (tensor units per int8 step, ``amax / 127``), in file order.
            Values are rounded to float32 on construction, so the record holds exactly what the file
            holds and formatting it cannot change a bit.
    """

    trt_version: str
    version_code: int
    algorithm: str
    scales: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if version_string(self.version_code) != self.trt_version:
            raise TrtoptError(f"calibration cache version {self.trt_version} does not match its integer "
                              f"{self.version_code} ({version_string(self.version_code)})",
                              "build it with version_code(trt_version) or use ranges_to_cache")
        _check_algorithm(self.algorithm)
        scales = {}
        for name, value in self.scales.items():
            try:
                scales[str(name)] = _float32(float(value))
            except OverflowError:
                raise TrtoptError(f"scale {value} of tensor {name} does not fit a float32",
                                  "check the tensor's range; recalibrate") from None
        object.__setattr__(self, "scales", scales)

    @property
    def header(self) -> str:
        """The first line, e.g. "TRT-100300-EntropyCalibration2"."""
        return f"TRT-{self.version_code}-{self.algorithm}"

    def amax(self) -> dict[str, float]:
        """Tensor name -> amax (``scale * 127``, exact in float64 for a float32 scale)."""
        return {name: s * 127.0 for name, s in self.scales.items()}


def _check_algorithm(algorithm: str) -> str:
    if algorithm not in ALGORITHMS:
        raise TrtoptError(f"calibration algorithm {algorithm!r} is not a TensorRT calibrator",
                          f"use one of {', '.join(ALGORITHMS)}")
    return algorithm


def calibrating_version(trt_version: str) -> tuple[str, int]:
    """Canonical version string and integer for a TensorRT that reads caches.

    Raises TrtoptError for 11.x and later (no calibrators, no caches) and for a malformed version.
    """
    code = version_code(trt_version)
    if _major(code) >= 11:
        raise TrtoptError(f"TensorRT {version_string(code)} removed INT8 calibrators and reads no calibration cache",
                          f"make explicit Q/DQ INT8 ONNX with {_QDQ_HINT}")
    return version_string(code), code


# ---------------------------------------------------------------------------------------- text


def _error(where: str, line: int, problem: str, fix: str) -> TrtoptError:
    return TrtoptError(f"{where} line {line}: {problem}", fix)


_REWRITE = "recalibrate, or fix the line by hand (TRT-<version>-<algorithm>, then <tensor name>: <8 hex digits>)"


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_CONTROL_BYTES = re.compile(_CONTROL.pattern.encode())
_BINARY = "is binary, not a text calibration cache (an engine or timing cache?)"
_BINARY_FIX = "pass the calibration cache the calibrator wrote (text starting with TRT-)"


def _decode(data: str | bytes, where: str) -> str:
    """Text of a cache; binary data (control characters, or bytes that are not UTF-8) is an error
    naming the line of the first bad byte."""
    if isinstance(data, bytes):
        control = _CONTROL_BYTES.search(data)
        end = control.start() if control else len(data)
        try:
            text = data[:end].decode("utf-8")  # a control byte never splits a UTF-8 sequence
        except UnicodeDecodeError as e:
            raise _error(where, data.count(b"\n", 0, e.start) + 1, _BINARY, _BINARY_FIX) from None
        if control:
            raise _error(where, data.count(b"\n", 0, end) + 1, _BINARY, _BINARY_FIX)
    else:
        text = data
        control = _CONTROL.search(text)
        if control:
            raise _error(where, text.count("\n", 0, control.start()) + 1, _BINARY, _BINARY_FIX)
    return text.removeprefix("\ufeff")  # a byte-order mark some editors add


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) pairs without line endings; one trailing newline (or CRLF) is optional."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for i, line in enumerate(lines, 1):
        yield i, line.removesuffix("\r")


def parse_cache(text: str | bytes, where: str = "cache") -> CalibrationCache:
    """Parse the text of a TensorRT calibration cache.

    Args:
        text: the file's contents (bytes are decoded as UTF-8).
        where: what to call the source in errors (a file path).

    Raises TrtoptError naming ``where`` and the line number for: binary data, an empty cache, a
    missing or malformed header (unknown algorithm, a version integer that is no TensorRT version,
    placeholders such as ``TRT-8XXX-``), a line that is not ``<name>: <8 hex digits>``, hex of the wrong
    length, an empty or duplicate tensor name, and a cache with no tensors.
    """
    text = _decode(text, where)
    lines = list(_lines(text))
    if not lines or not any(line.strip() for _, line in lines):
        raise _error(where, 1, "the calibration cache is empty", "recalibrate to write it again")
    n, header = lines[0]
    m = _HEADER.fullmatch(header.strip())
    if not m:
        raise _error(where, n, f"{header.strip()[:60]!r} is not a calibration cache header",
                     "the first line must be TRT-<version integer>-<algorithm>, e.g. TRT-100300-EntropyCalibration2")
    digits, algorithm = m["code"], m["algorithm"]
    if not digits.isdigit() or digits.startswith("0"):
        raise _error(where, n, f"header version {digits!r} is not a TensorRT version integer",
                     "write the version integer, e.g. TRT-100300-... for 10.3.0 or TRT-8601-... for 8.6.1")
    try:
        code = int(digits)
        trt_version = version_string(code)
        _check_algorithm(algorithm)
    except TrtoptError as e:
        raise _error(where, n, f"header {header.strip()!r}: {e.problem}", e.fix or _REWRITE) from None
    scales: dict[str, float] = {}
    first_line: dict[str, int] = {}
    for n, line in lines[1:]:
        if not line.strip():
            continue  # blank lines carry nothing; trtexec's reader skips them too
        name, sep, value = line.rpartition(": ")
        value = value.strip()
        if not sep or not name:
            raise _error(where, n, f"{line[:60]!r} is not '<tensor name>: <8 hex digits>'", _REWRITE)
        if not _HEX.fullmatch(value):
            what = (f"has {len(value)} hex digits, not 8" if re.fullmatch(r"[0-9A-Fa-f]+", value)
                    else f"scale {value[:20]!r} is not hexadecimal")
            raise _error(where, n, f"tensor {name}: {what}", _REWRITE)
        if name in scales:
            raise _error(where, n, f"tensor {name} appears twice (first on line {first_line[name]})",
                         "keep one line per tensor; recalibrate if unsure which is right")
        scales[name] = struct.unpack(">f", bytes.fromhex(value))[0]
        first_line[name] = n
    if not scales:
        raise _error(where, n + 1, "the calibration cache has a header but no tensor scales",
                     "recalibrate; an interrupted calibration leaves an empty cache")
    return CalibrationCache(trt_version, code, algorithm, scales)


def format_cache(cache: CalibrationCache) -> str:
    """The cache as TensorRT writes it: header line, then ``<name>: <8 lowercase hex digits>`` per tensor.

    Ends with a newline. ``format_cache(parse_cache(t)) == t`` for any cache text in this form.
    """
    lines = [cache.header, *(f"{name}: {_hex(scale)}" for name, scale in cache.scales.items())]
    return "\n".join(lines) + "\n"


def read_cache(path: str | os.PathLike, check_scales: bool = True) -> CalibrationCache:
    """Read and parse a calibration cache file; errors name the file and line.

    With ``check_scales`` (the default), a scale that is not finite and positive is an error too
    (:func:`require_valid_scales`); :func:`inspect_cache` reads without it, to report such scales.
    """
    from trtopt.files import require_file

    p = require_file(path, "calibration cache", "check the path or calibrate first")
    cache = parse_cache(p.read_bytes(), where=str(p))
    if check_scales:
        require_valid_scales(cache, str(p))
    return cache


def require_valid_scales(cache: CalibrationCache, where: str = "calibration cache") -> None:
    """Raise TrtoptError naming the tensors whose scale is not finite and positive.

    TensorRT takes ``[-127*scale, 127*scale]`` as the tensor's range: a zero, negative or NaN scale gives
    an INT8 layer whose outputs are zero or NaN, built without complaint.
    """
    bad = [name for name, s in cache.scales.items() if not (math.isfinite(s) and s > 0)]
    if bad:
        first = cache.scales[bad[0]]
        raise TrtoptError(f"{where}: {len(bad)} tensor(s) have a scale that is not finite and positive: "
                          f"{_first_few(bad)} ({bad[0]}: {first!r})", "recalibrate to write the cache again")


def write_cache(cache: CalibrationCache, path: str | os.PathLike, force: bool = False) -> Path:
    """Write ``cache`` atomically to ``path`` (refuses an existing file unless ``force``, and scales that are
    not finite and positive); returns the path."""
    from trtopt.files import write_text

    require_valid_scales(cache, f"calibration cache for {path}")
    return write_text(path, format_cache(cache), force=force)


# ---------------------------------------------------------------------------------------- ranges


def ranges_to_cache(ranges: Ranges, trt_version: str = DEFAULT_TRT_VERSION,
                    algorithm: str | None = None) -> CalibrationCache:
    """A calibration cache holding ``ranges``' amax values, for TensorRT ``trt_version`` (7.x-10.x).

    Each scale is ``float32(amax / 127)`` (float64 division, then rounded to the nearest float32). That
    rounding is the only loss: :func:`cache_to_ranges` gives back ``amax' = 127 * scale``, which equals
    ``amax`` exactly when ``amax`` is 127 times a float32 and otherwise differs by at most about 2**-24
    relative; converting ``amax'`` again gives the same scale bits.

    The header's algorithm, unless given, follows ``ranges.method``: entropy -> EntropyCalibration2,
    minmax -> MinMaxCalibration, percentile, mse and auto -> EntropyCalibration2 (TensorRT reads only the
    scales from a cache; the header must name the calibrator the build uses, and no calibrator computes
    percentile or MSE ranges), and ranges read from a cache keep that cache's algorithm. Note that
    ``trtexec --calib`` accepts only EntropyCalibration2: pass ``algorithm="EntropyCalibration2"`` for
    caches built with trtexec.

    Raises TrtoptError for TensorRT 11.x and later (no calibrators), an unknown method without an
    explicit algorithm, and an amax that is not finite and positive (TensorRT needs a non-empty range).
    """
    trt_version, code = calibrating_version(trt_version)
    if algorithm is None:
        method = ranges.method
        if method.startswith(_CACHE_METHOD_PREFIX):
            algorithm = method[len(_CACHE_METHOD_PREFIX):]
        elif method in _METHOD_ALGORITHMS:
            algorithm = _METHOD_ALGORITHMS[method]
        else:
            raise TrtoptError(f"ranges method {method!r} has no TensorRT calibrator",
                              f"pass an algorithm ({', '.join(ALGORITHMS)})")
    _check_algorithm(algorithm)
    bad = [name for name, r in ranges.tensors.items() if not (math.isfinite(r.amax) and r.amax > 0)]
    if bad:  # trtopt calibrate gives an all-zero tensor a tiny positive range; older ranges files hold amax 0
        raise TrtoptError(f"{len(bad)} tensor(s) have no usable range (amax must be finite and > 0): "
                          f"{_first_few(bad)}", "recalibrate with this trtopt (trtopt calibrate), which gives "
                          "tensors that are 0 on every sample a tiny positive range")
    scales = {name: r.amax / 127.0 for name, r in ranges.tensors.items()}
    return CalibrationCache(trt_version, code, algorithm, scales)


def cache_to_ranges(cache: CalibrationCache) -> Ranges:
    """The ranges a cache encodes: amax = ``scale * 127`` (exact), min = -amax, max = amax.

    Raises TrtoptError for scales that are not finite and positive (:func:`require_valid_scales`).
    ``method`` is "tensorrt-cache:<algorithm>" and ``settings`` records the TensorRT version, version
    integer and algorithm; a cache carries no sample count or data fingerprint, so those stay empty.
    """
    require_valid_scales(cache)
    tensors = {name: TensorRange(amax, -amax, amax) for name, amax in cache.amax().items()}
    settings = {"trt_version": cache.trt_version, "version_code": cache.version_code, "algorithm": cache.algorithm}
    return Ranges(tensors, f"{_CACHE_METHOD_PREFIX}{cache.algorithm}", 0, settings=settings)


def convert_cache(cache: CalibrationCache, trt_version: str | None = None,
                  algorithm: str | None = None) -> CalibrationCache:
    """The same scales under another header: another TensorRT 7.x-10.x version and/or algorithm.

    Use it to make a cache TensorRT will read (e.g. 10.3 -> 10.16, or MinMaxCalibration ->
    EntropyCalibration2 for trtexec). Only the header changes; whether the scales still fit depends on
    the tensor names the target TensorRT's ONNX parser produces, which :func:`inspect_cache` checks
    against the ONNX graph. Refuses TensorRT 11.x and later, which has no calibrators, and scales that are
    not finite and positive.
    """
    require_valid_scales(cache)
    version, code = (calibrating_version(trt_version) if trt_version is not None
                     else (cache.trt_version, cache.version_code))
    return CalibrationCache(version, code, _check_algorithm(algorithm or cache.algorithm), dict(cache.scales))


# ---------------------------------------------------------------------------------------- inspection


def _first_few(names: list[str]) -> str:
    shown = ", ".join(names[:_FIRST_FEW])
    return shown + (f", ... ({len(names) - _FIRST_FEW} more)" if len(names) > _FIRST_FEW else "")


def _graph_tensors(graph: Any, known: set[str], compute_inputs: list[str], constants: set[str]) -> None:
    """Collect every tensor name of ``graph`` (subgraphs included) and the activation inputs of
    Conv/ConvTranspose/MatMul/Gemm nodes.

    Weights are not activations: initializers, Constant outputs and outputs of nodes whose inputs are
    all constant (TensorRT folds those) are skipped. Nodes are in topological order, as ONNX requires.
    """
    constants.update(t.name for t in graph.initializer)
    known.update(v.name for v in graph.input)
    known.update(t.name for t in graph.initializer)
    for node in graph.node:
        known.update(o for o in node.output if o)
        inputs = [i for i in node.input if i]
        if node.op_type == "Constant" or (inputs and all(i in constants for i in inputs)):
            constants.update(o for o in node.output if o)
        if node.domain in ("", "ai.onnx"):
            for index in _COMPUTE_OPS.get(node.op_type, ()):
                name = node.input[index] if index < len(node.input) else ""
                if name and name not in constants and name not in compute_inputs:
                    compute_inputs.append(name)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _graph_tensors(sub, known, compute_inputs, constants)


def _load_onnx_graph(onnx_path: str | os.PathLike) -> Any:
    import onnx

    path = inspect_onnx(onnx_path).path  # missing, not ONNX, empty or cut off: one error naming the file
    return onnx.load(str(path), load_external_data=False).graph


def inspect_cache(cache: CalibrationCache, onnx_path: str | os.PathLike | None = None,
                  expected_trt_version: str | None = None) -> dict[str, Any]:
    """Describe a cache and say what would make TensorRT ignore or under-use it.

    Returns a JSON-ready dict: ``trt_version``, ``version_code``, ``algorithm``, ``tensor_count``,
    ``amax_min`` / ``amax_max`` (over finite positive scales; None when there are none),
    ``bad_scales`` (tensors whose scale is not finite and positive), and with ``onnx_path``:
    ``onnx``, ``not_in_onnx`` (cache names absent from the graph; TensorRT-internal
    "(Unnamed Layer* ...)" names are expected there and only counted, in ``internal_tensors``) and
    ``unscaled_compute_inputs`` (activations feeding Conv/ConvTranspose/MatMul/Gemm without a scale,
    which TensorRT runs in higher precision). ``warnings`` lists each problem as one line.

    Warnings: the cache's version differs from ``expected_trt_version`` (TensorRT skips such a cache);
    the cache or the expected version is TensorRT 11+ (no calibration at all); an algorithm other than
    EntropyCalibration2 (``trtexec --calib`` rejects it); bad scales; cache names not in the graph;
    unscaled compute inputs. A cache that matches the version and the graph gets none.
    """
    warnings: list[str] = []
    expected_code = version_code(expected_trt_version) if expected_trt_version is not None else None
    if expected_code is not None:
        expected = version_string(expected_code)
        if expected_code != cache.version_code:
            warnings.append(f"TensorRT {expected} ignores a cache written for {cache.trt_version}: "
                            f"recalibrate or convert with {_CONVERT_HINT}")
        if _major(expected_code) >= 11:
            warnings.append(f"TensorRT {expected} has no implicit INT8 calibration and reads no cache: "
                            f"use Q/DQ ONNX ({_QDQ_HINT})")
    if _major(cache.version_code) >= 11 and (expected_code is None or _major(expected_code) < 11):
        warnings.append(f"the cache names TensorRT {cache.trt_version}, which has no implicit INT8 calibration: "
                        f"use Q/DQ ONNX ({_QDQ_HINT})")
    if cache.algorithm != TRTEXEC_ALGORITHM:
        warnings.append(f"trtexec --calib reads caches with an {TRTEXEC_ALGORITHM} calibrator and rejects this "
                        f"{cache.algorithm} header: for trtexec builds convert with {_CONVERT_HINT} "
                        f"(algorithm {TRTEXEC_ALGORITHM})")
    bad = [name for name, s in cache.scales.items() if not (math.isfinite(s) and s > 0)]
    if bad:
        warnings.append(f"{len(bad)} tensor(s) have a scale that is not finite and positive: {_first_few(bad)}; "
                        "recalibrate")
    amaxes = [s * 127.0 for s in cache.scales.values() if math.isfinite(s) and s > 0]
    info: dict[str, Any] = {
        "trt_version": cache.trt_version, "version_code": cache.version_code, "algorithm": cache.algorithm,
        "tensor_count": len(cache.scales), "amax_min": min(amaxes, default=None),
        "amax_max": max(amaxes, default=None), "bad_scales": bad,
    }
    if onnx_path is not None:
        known: set[str] = set()
        compute_inputs: list[str] = []
        _graph_tensors(_load_onnx_graph(onnx_path), known, compute_inputs, set())
        internal = [n for n in cache.scales if n not in known and n.startswith(_UNNAMED_PREFIX)]
        unknown = [n for n in cache.scales if n not in known and not n.startswith(_UNNAMED_PREFIX)]
        unscaled = [n for n in compute_inputs if n not in cache.scales]
        if unknown:
            warnings.append(f"{len(unknown)} cache tensor(s) are not in {Path(onnx_path).name}: {_first_few(unknown)}; "
                            "the cache was made for another model or export: recalibrate this one")
        if unscaled:
            warnings.append(f"{len(unscaled)} input(s) of Conv/MatMul/Gemm have no scale and will not run in INT8: "
                            f"{_first_few(unscaled)}; recalibrate with this ONNX")
        info.update({"onnx": str(onnx_path), "not_in_onnx": unknown, "internal_tensors": len(internal),
                     "unscaled_compute_inputs": unscaled})
    info["warnings"] = warnings
    return info
