"""Model inputs for parity checks, calibration, evaluation and profiling.

Inputs are always a *feed*: a dict from input name to a numpy array whose axis 0 is the sample axis.
Sources:
    None / "random"          seeded random inputs of each input's shape and range
    ``file.npy``             one array (single-input models), shape (N, *input_shape)
    ``file.npz``             one array per input name (or one array for a single-input model)
    ``path/to/images/``      an image folder (recursively, sorted), standard preprocessing
    ``skimage:photos``       19 real photographs shipped inside scikit-image (astronaut, coffee, ...)
    ``skimage:crops:N``      N random crops of those photos (calibration data apart from the photos)
Images come at the model's input H×W (the first input's shape, e.g. 256×256 for timm mobilevit_xxs or as
``--input-shape`` sets it), with the preprocessing's mean/std and resize-to-crop ratio (ImageNet's
256/224 unless the model spec gives its own, as timm's ``crop_pct`` does).
    ``dataset:NAME:SPLIT``   a labelled dataset split (`trtopt.datasets`, e.g. dataset:digits:test);
                             :func:`labels_for` gives its labels
    ``text:minilm-card``     the sentences of all-MiniLM-L6-v2's model card, tokenized for zoo:minilm_l6
    a feed (dict) or array   used as is (an array feeds a single-input model)
    a Python iterable        of feeds (dicts) or arrays, concatenated (see :func:`from_iterable`)
Everything is deterministic: same source, same seed, same arrays in the same order.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trtopt.errors import TrtoptError, first_line, missing_dependency
from trtopt.feeds import CheckedFeed, Feed, as_feed, check_feed
from trtopt.files import require_file
from trtopt.models.spec import ImagePreprocess, InputSpec

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
                  "colorwheel", "logo", "camera", "coins", "moon", "page", "brick", "grass", "gravel", "clock",
                  "text", "cell")


DEFAULT_INTEGER_HIGH = 100  # random integer inputs fall in [0, 100) unless the graph says more (token ids, masks)

# Ops an index goes through unchanged on its way to a Gather (reshaped, cast, copied: values kept).
_INDEX_PASSTHROUGH = ("Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Expand", "Transpose")


def random_feed(inputs: Sequence[InputSpec], count: int, seed: int = 0) -> Feed:
    """``count`` seeded random samples per input: uniform in [low, high) (integers for int dtypes).

    Raises TrtoptError for an input with a symbolic axis (its length is not known).
    """
    rng = np.random.default_rng(seed)
    feed: Feed = {}
    for spec in inputs:
        if not all(isinstance(d, int) for d in spec.shape):
            raise TrtoptError(f"input {spec.name!r} has symbolic axes {spec.dims}, so random data has no shape",
                              f"declare its shape, batch included: --input-shape {spec.name}:1x"
                              f"{'x'.join(str(d) if isinstance(d, int) else d.upper() for d in spec.shape)}, "
                              "or pass --data with arrays of that shape")
        shape = (count, *spec.shape)
        if np.issubdtype(np.dtype(spec.dtype), np.integer):
            feed[spec.name] = rng.integers(int(spec.low), int(spec.high), size=shape, dtype=spec.dtype)
        else:
            feed[spec.name] = rng.uniform(spec.low, spec.high, size=shape).astype(spec.dtype)
    return feed


def integer_input_limits(model: Any) -> dict[str, int]:
    """For each integer graph input that indexes a table, the table's size (the exclusive upper bound).

    An input indexes a table when it reaches the indices of a Gather (an embedding lookup), possibly
    through Cast/Reshape/Unsqueeze/Squeeze/Flatten/Identity/Expand/Transpose, whose data is a constant
    (initializer or Constant node): its size along the Gather's axis bounds the ids. With several
    tables the smallest wins. ``model`` is a ModelProto (weights need not be loaded); inputs that index
    nothing are left out.
    """
    from onnx import TensorProto, numpy_helper

    sizes = {t.name: list(t.dims) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                sizes[node.output[0]] = list(numpy_helper.to_array(value).shape)
    integer = {TensorProto.INT8, TensorProto.INT16, TensorProto.INT32, TensorProto.INT64, TensorProto.UINT8,
               TensorProto.UINT16, TensorProto.UINT32, TensorProto.UINT64}
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    limits: dict[str, int] = {}
    for graph_input in model.graph.input:
        if graph_input.type.tensor_type.elem_type not in integer or graph_input.name in sizes:
            continue
        frontier, seen = [graph_input.name], set()
        while frontier:
            name = frontier.pop()
            if name in seen:
                continue
            seen.add(name)
            for node in consumers.get(name, []):
                if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == name \
                        and node.input[0] in sizes:
                    dims = sizes[node.input[0]]
                    axis = next((a.i for a in node.attribute if a.name == "axis"), 0) % max(len(dims), 1)
                    if dims:
                        limits[graph_input.name] = min(limits.get(graph_input.name, dims[axis]), dims[axis])
                elif node.op_type in _INDEX_PASSTHROUGH and node.input[0] == name:
                    frontier.append(node.output[0])
    return limits


def load_feed(source: str | os.PathLike | Iterable | None, inputs: Sequence[InputSpec], count: int | None = None,
              seed: int = 0, preprocess: ImagePreprocess | None = None) -> CheckedFeed:
    """Load inputs from ``source`` (see module docstring) and check them against ``inputs``.

    Args:
        source: the data source; None or "random" gives seeded random data.
        inputs: the model's inputs (names, shapes without batch, dtypes).
        count: number of samples; random data needs it (default 8), real data is truncated to it.
        seed: seed for random data.
        preprocess: image preprocessing for image folders / photos (default: ImageNet's mean, std and
            256/224 resize ratio); the size comes from ``inputs`` (:func:`image_size`).

    Returns:
        The feed checked by `trtopt.feeds.check_feed` (read-only, cast to the inputs' dtypes).

    Raises:
        TrtoptError: an unreadable source; arrays missing, unexpected, of the wrong shape or dtype family,
        with different sample counts, without samples, or holding NaN/inf (each naming the input).
    """
    if source is None or (isinstance(source, str) and source == "random"):
        feed = random_feed(inputs, count or 8, seed)
        return check_feed(feed, inputs, source="random inputs")
    if isinstance(source, (str, os.PathLike)):
        feed = _load_path(str(source), inputs, preprocess or ImagePreprocess())
    elif isinstance(source, Mapping):
        feed = {k: np.asarray(v) for k, v in source.items()}
    elif isinstance(source, np.ndarray):
        feed = {inputs[0].name: source}
    else:
        feed = from_iterable(source, inputs)
    if count is not None:
        feed = {k: v[:count] for k, v in feed.items()}
    return check_feed(feed, inputs, source=str(source) if isinstance(source, (str, os.PathLike)) else "iterable")


def labels_for(source: str | os.PathLike | None) -> np.ndarray | None:
    """Class labels of a labelled source (``dataset:NAME:SPLIT``), None for unlabelled sources."""
    if isinstance(source, str) and source.startswith("dataset:"):
        from trtopt.datasets import load_dataset

        return load_dataset(*_dataset_parts(source)).labels
    return None


def _dataset_parts(source: str) -> tuple[str, str]:
    parts = source.split(":")
    if len(parts) != 3:
        raise TrtoptError(f"data source {source!r} is not dataset:NAME:SPLIT", "e.g. dataset:digits:test")
    return parts[1], parts[2]


def image_size(inputs: Sequence[InputSpec], preprocess: ImagePreprocess | None = None) -> tuple[int, int]:
    """(H, W) of the images an image source makes for ``inputs``: the first input's last two axes when it is
    a fixed (C, H, W) image, else the preprocessing's square size (224 by default)."""
    shape = tuple(inputs[0].shape) if inputs else ()
    if len(shape) == 3 and all(isinstance(d, int) and d > 0 for d in shape[1:]):
        return int(shape[1]), int(shape[2])
    size = (preprocess or ImagePreprocess()).size
    return size, size


def _load_path(source: str, inputs: Sequence[InputSpec], preprocess: ImagePreprocess) -> Feed:
    if source.startswith("dataset:"):
        from trtopt.datasets import feed_source

        return feed_source(*_dataset_parts(source))
    if source == "text:minilm-card":
        from trtopt.models.zoo import minilm_card_sentences, tokenize_for_minilm

        return {k: np.asarray(v) for k, v in tokenize_for_minilm(minilm_card_sentences()).items()}
    hw = image_size(inputs, preprocess)
    if source == "skimage:photos":
        return {inputs[0].name: skimage_photos(preprocess, hw)}
    if source.startswith("skimage:crops"):
        count = source.removeprefix("skimage:crops").lstrip(":") or "128"
        if not count.isdigit() or int(count) < 1:
            raise TrtoptError(f"data source {source!r} has no valid count", "write it as skimage:crops:N, e.g. skimage:crops:128")
        crops = iter_photo_crops(int(count), size=hw, pre=preprocess)
        return {inputs[0].name: np.concatenate([b["input"] for b in crops])}
    path = Path(source)
    if path.is_dir():
        return {inputs[0].name: load_image_folder(path, preprocess, hw)}
    require_file(path, "data source", "give a .npy/.npz file, an image folder, or skimage:photos")
    if path.suffix == ".npy":
        return {inputs[0].name: load_npy(path)}
    if path.suffix == ".npz":
        arrays = load_npz(path)
        if len(inputs) == 1 and len(arrays) == 1:
            return {inputs[0].name: next(iter(arrays.values()))}
        return arrays
    raise TrtoptError(f"data source {path} has an unknown type {path.suffix!r}", "use .npy, .npz or an image folder")


def load_npy(path: str | os.PathLike) -> np.ndarray:
    """The array in a ``.npy`` file, read without unpickling (``allow_pickle=False``).

    Raises TrtoptError naming the file for anything numpy cannot read as a plain array: a truncated or
    garbage file, or an object array (pickled Python objects, which could run code when loaded).
    """
    def read(p: Path) -> np.ndarray:
        array = np.load(p, allow_pickle=False)
        if not isinstance(array, np.ndarray):  # np.load reads an .npz archive whatever the suffix says
            array.close()
            raise ValueError("an .npz archive, not a single .npy array")
        return array

    return _np_read(Path(path), read)


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of a ``.npz`` archive by name, read completely and without unpickling (see :func:`load_npy`)."""
    def read(p: Path) -> dict[str, np.ndarray]:
        with np.load(p, allow_pickle=False) as archive:
            if not hasattr(archive, "files"):  # np.load reads a .npy whatever its suffix says
                raise ValueError("a single .npy array, not an .npz archive")
            return {k: archive[k] for k in archive.files}

    return _np_read(Path(path), read)


def _np_read(path: Path, read: Callable[[Path], Any]) -> Any:
    try:
        return read(path)
    except Exception as e:  # numpy raises ValueError, OSError, EOFError, BadZipFile, zlib.error, MemoryError ...
        if "Object arrays cannot be loaded" in str(e):  # numpy's words for an object array under allow_pickle=False
            raise TrtoptError(f"{path} holds an object array (pickled Python objects), which trtopt does not load",
                              "save plain numeric arrays (numpy.save/savez of int or float arrays)") from e
        if "allow_pickle" in str(e):  # numpy takes a file with no numpy header for a pickle and advises unpickling it
            raise TrtoptError(f"{path} is not a readable numpy file (no .npy header, not an .npz archive)",
                              "re-save it with numpy.save/savez") from e
        raise TrtoptError(f"{path} is not a readable numpy file ({first_line(e, 160, with_type=True)})",
                          "re-save it with numpy.save/savez") from e


def from_iterable(items: Iterable, inputs: Sequence[InputSpec]) -> Feed:
    """Concatenate an iterable of feeds (dicts) or of arrays (single-input models) into one feed."""
    parts: dict[str, list[np.ndarray]] = {}
    for k, item in enumerate(items):
        for name, value in as_feed(item, inputs, f"iterable item {k}").items():
            parts.setdefault(name, []).append(value)
    if not parts:
        raise TrtoptError("the data iterable yielded nothing", "provide at least one batch")
    return {k: np.concatenate(v, axis=0) for k, v in parts.items()}


def preprocess_image(image: Any, pre: ImagePreprocess, hw: tuple[int, int] | None = None) -> np.ndarray:
    """A PIL image → float32 array (3, H, W): resize, center crop, scale to [0, 1], normalize (RGB order).

    ``hw`` is the crop (default ``pre.size`` square). The image is first scaled (aspect kept) to cover
    ``hw × pre.resize / pre.size``: for a square crop, the shorter side becomes ``resize`` as in
    torchvision's ``Resize(resize) + CenterCrop(size)``.
    """
    from PIL import Image

    height, width = hw or (pre.size, pre.size)
    ratio = pre.resize / pre.size
    image = image.convert("RGB")
    w, h = image.size
    scale = max(height * ratio / h, width * ratio / w)
    image = image.resize((max(width, round(w * scale)), max(height, round(h * scale))), Image.BILINEAR)
    w, h = image.size
    left, top = (w - width) // 2, (h - height) // 2
    image = image.crop((left, top, left + width, top + height))
    arr = np.asarray(image, dtype=np.float32) / 255.0
    arr = (arr - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def load_image_folder(path: str | os.PathLike, pre: ImagePreprocess, hw: tuple[int, int] | None = None) -> np.ndarray:
    """All images under ``path`` (recursive, sorted by relative path) as (N, 3, H, W) float32 (``hw``,
    default ``pre.size`` square; see :func:`preprocess_image`).

    Raises TrtoptError naming the file for an image that cannot be decoded or has more than
    :data:`MAX_IMAGE_PIXELS` pixels (checked from its header, before decoding).
    """
    files = sorted(p for p in Path(path).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())  # no pipes
    if not files:
        raise TrtoptError(f"image folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})", "point at a folder of images")
    return np.stack([_read_image(f, pre, hw) for f in files])


#: Most pixels an input image may have: PIL's decompression-bomb threshold (about 89.5 megapixels), checked
#: before decoding, so a crafted header cannot make trtopt allocate gigabytes.
MAX_IMAGE_PIXELS = 89_478_485


def _read_image(f: Path, pre: ImagePreprocess, hw: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(f) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise TrtoptError(f"image {f} is {im.width}x{im.height} pixels, more than the {MAX_IMAGE_PIXELS:,} "
                                  "trtopt reads", "downscale it or remove it from the folder")
            return preprocess_image(im, pre, hw)
    except TrtoptError:
        raise
    except Exception as e:  # PIL's decoders raise OSError, SyntaxError, ValueError, struct.error, ...
        raise TrtoptError(f"image {f} cannot be read ({type(e).__name__})", "remove or replace the file") from e


def skimage_photos(pre: ImagePreprocess, hw: tuple[int, int] | None = None) -> np.ndarray:
    """The real photographs shipped in scikit-image, preprocessed: (19, 3, H, W) float32 (``hw``, default
    ``pre.size`` square; see :func:`preprocess_image`)."""
    try:
        import skimage.data
    except ImportError as e:
        raise missing_dependency("scikit-image", "models", "the skimage:photos data source") from e
    from PIL import Image

    arrays = []
    for name in SKIMAGE_PHOTOS:
        img = np.asarray(getattr(skimage.data, name)())
        if img.dtype != np.uint8:
            img = (img.astype(np.float32) * 255).astype(np.uint8)
        arrays.append(preprocess_image(Image.fromarray(img[..., :3] if img.ndim == 3 else img), pre, hw))
    return np.stack(arrays)


def iter_photo_crops(count: int, batch_size: int = 16, size: int | tuple[int, int] | None = None, seed: int = 0,
                     pre: ImagePreprocess | None = None) -> Iterator[Feed]:
    """``count`` calibration images made from the scikit-image photos, in batches of ``batch_size``.

    ``size`` is the crop: an int for a square, or (H, W); default ``pre.size`` (224 without ``pre``).
    Sample k is a seeded random crop of photo k % 19 (photos preprocessed square at 256/224 × the larger
    side), flipped horizontally with probability 1/2; it depends only on (seed, k), so batching never
    changes the data. Yields feeds ``{"input": (b, 3, H, W) float32}``; memory is one batch, whatever ``count``.
    """
    base = pre or ImagePreprocess()
    height, width = (size, size) if isinstance(size, int) else size or (base.size, base.size)
    source = int(round(max(height, width) * 256 / 224))
    photos = skimage_photos(ImagePreprocess(size=source, resize=source, mean=base.mean, std=base.std))
    for start in range(0, count, batch_size):
        batch = []
        for k in range(start, min(start + batch_size, count)):
            rng = np.random.default_rng([seed, k])
            top, left = rng.integers(0, [source - height + 1, source - width + 1])  # as size=2 for squares
            img = photos[k % len(photos), :, top:top + height, left:left + width]
            batch.append(img[:, :, ::-1] if rng.random() < 0.5 else img)
        yield {"input": np.ascontiguousarray(np.stack(batch))}


def take_batch(feed: Mapping[str, np.ndarray], batch_size: int, start: int = 0) -> Feed:
    """``batch_size`` samples from ``feed`` starting at ``start``, wrapping around (repeats if fewer)."""
    n = len(next(iter(feed.values())))
    idx = (np.arange(batch_size) + start) % n
    return {k: np.ascontiguousarray(v[idx]) for k, v in feed.items()}


def iter_batches(feed: Mapping[str, np.ndarray], batch_size: int) -> Iterator[Feed]:
    """Consecutive batches covering every sample once (the last one may be smaller)."""
    n = len(next(iter(feed.values())))
    for start in range(0, n, batch_size):
        yield {k: v[start:start + batch_size] for k, v in feed.items()}
