"""Checks of command-line options that need neither torch nor a model: run before any slow
work, so that a mistyped model name, a missing file or an output folder that does not exist
is one line within a second, not after 7-50 s of importing torch and loading a model, and
never after the whole run.

Each check raises the same :mod:`rtseg.errors` type, with the same message, as the slow
code that would otherwise find the problem (``rtseg.models.get_config``,
``rtseg.segmenter.parse_device``, ``rtseg.models.checkpoint.read_state_dict``). Nothing
here imports torch: ``tests/test_cli.py`` checks that these errors leave it unimported.
"""

from __future__ import annotations

import difflib
import os
import re

from rtseg.errors import CheckpointError, ConfigError, EngineError

#: every variant of :data:`rtseg.models.MODELS`, by name (that dict imports torch to build its
#: configs); ``tests/test_cli.py::test_preflight_model_names_are_the_registry`` keeps the two equal
MODEL_NAMES = (
    "yolact_base", "yolact_im400", "yolact_im700", "yolact_resnet50", "yolact_plus_base", "yolact_plus_resnet50",
    "yolact_resnet18_384", "yolact_resnet18_half_384",
    "solov2_r50_fpn", "solov2_r101_fpn", "solov2_r101_dcn_fpn",
    "solov2_light_448_r18", "solov2_light_448_r34", "solov2_light_448_r50", "solov2_light_512_dcn_r50",
    "solov2_light_448_dcn_r50",
    "solov2_adet_r50_fpn", "solov2_adet_r101_fpn", "solov2_light_resnet18_half_384",
    "centermask2_v39", "centermask2_v57", "centermask2_v99",
    "centermask2_lite_v19", "centermask2_lite_v39", "centermask2_lite_v19_slim", "centermask2_lite_v19_slim_dw",
    "centermask_lite_vovnet19_quarter_384",
)

_DEVICE = re.compile(r"cpu|cuda(:\d+)?")

#: the variants trained on rtseg's synthetic shapes (:data:`rtseg.synthetic.CLASS_NAMES`); every
#: other variant has the 80 COCO classes. ``tests/test_cli.py`` keeps this equal to the registry.
SYNTHETIC_CLASS_MODELS = ("yolact_resnet18_384", "yolact_resnet18_half_384", "centermask_lite_vovnet19_quarter_384",
                          "solov2_light_resnet18_half_384")


def model_class_names(name: str) -> tuple[str, ...]:
    """A variant's class names without importing torch (what ``--classes`` is checked against)."""
    if name in SYNTHETIC_CLASS_MODELS:
        from rtseg.synthetic import CLASS_NAMES

        return tuple(CLASS_NAMES)
    from rtseg.data.coco_classes import COCO_CLASSES

    return tuple(COCO_CLASSES)


def parse_classes(text: str, class_names: tuple[str, ...], model: str) -> list[int]:
    """``--classes person,car`` -> class ids; ``ConfigError`` naming the valid names otherwise."""
    wanted = [t.strip() for t in text.split(",") if t.strip()]
    if not wanted:
        raise ConfigError(f"--classes: expected class names separated by commas, got '{text}'")
    unknown = [t for t in wanted if t not in class_names]
    if unknown:
        raise ConfigError(f"--classes: unknown class name(s) {', '.join(repr(u) for u in unknown)} for model {model}; "
                          f"valid names: {', '.join(class_names)}")
    return sorted({class_names.index(t) for t in wanted})


def check_model_name(name: str) -> None:
    """``ConfigError`` for a name ``rtseg models`` does not list (with the closest names)."""
    if name in MODEL_NAMES:
        return
    close = difflib.get_close_matches(name, MODEL_NAMES, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(MODEL_NAMES)}"
    raise ConfigError(f"unknown model '{name}'{hint} (see 'rtseg models')")


def check_device_spelling(device: str) -> None:
    """``ConfigError`` unless ``device`` reads ``cpu``, ``cuda`` or ``cuda:N`` (whether that
    GPU exists is for torch to say, later)."""
    if not _DEVICE.fullmatch(device):
        raise ConfigError(f"unknown device '{device}', expected 'cpu', 'cuda' or 'cuda:N'")


def check_half(device: str, backend: str, engine: str | None = None) -> None:
    """``--half`` (a float16 network) needs a CUDA device and a local backend: ``ConfigError``
    otherwise. ``rtseg run`` calls it before the model loads; ``Segmenter(half=True)`` too."""
    if not str(device).startswith("cuda"):
        raise ConfigError(f"--half runs the network in float16 on a CUDA GPU: it needs --device cuda[:N], got '{device}'")
    if str(backend).startswith("triton://"):
        raise ConfigError("--half is for --backend torch, onnxruntime or tensorrt: a Triton server's model has "
                          "its own precision")
    if backend == "onnxruntime" and engine is None:
        raise ConfigError("--half with --backend onnxruntime needs a float16 graph: rtseg export --half, then "
                          "--engine PATH")


def check_weights_file(path: str) -> None:
    """The part of ``read_state_dict``'s checks that needs no torch: the file is there, is a
    file, and is not empty."""
    if not os.path.exists(path):
        raise CheckpointError(f"weights file '{path}' not found")
    if os.path.isdir(path):
        raise CheckpointError(f"weights path '{path}' is a directory, expected a .pth file")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"weights file '{path}' is empty (0 bytes), expected a PyTorch checkpoint")


def check_engine_file(path: str, backend: str) -> None:
    if not os.path.isfile(path):
        what = "ONNX file" if backend == "onnxruntime" else "engine file"
        raise EngineError(f"{what} '{path}' not found" + (" (it is a directory)" if os.path.isdir(path) else ""))


def check_output_file(option: str, path: str) -> None:
    """``ConfigError`` unless ``path`` can be created or replaced as a file: its folder
    exists and is a writable folder, and ``path`` is not itself a folder."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ConfigError(f"{option} {path}: expected a file name, found a directory")
    if not os.path.isdir(folder):
        found = "a file" if os.path.exists(folder) else "nothing"
        raise ConfigError(f"{option} {path}: directory '{folder}' does not exist (found {found} there)")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {path}: directory '{folder}' is not writable")


def check_output_dir(option: str, path: str) -> None:
    """``ConfigError`` unless ``path`` is a writable folder or can be created as one."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise ConfigError(f"{option} {path}: expected a directory, found a file at '{probe}'")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {path}: directory '{probe}' is not writable")


def read_sources_file(path: str) -> list[tuple[str, str | None]]:
    """The ``--sources FILE`` list: ``(spec, name or None)`` per line, in order.

    One source per line (a URL, path, camera index or ``synthetic...`` spec), optionally
    followed by whitespace and a stream name; ``#`` starts a comment, blank lines are skipped.
    A malformed line is one ``ConfigError`` naming its line number, before any model loads."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"--sources {path}: cannot read it: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--sources {path}: expected a UTF-8 text file, one source per line") from None
    entries: list[tuple[str, str | None]] = []
    for number, line in enumerate(text.splitlines(), 1):
        # a comment starts with '#' at the line start or after whitespace (a URL's own '#' stays)
        fields = re.split(r"(?:^|\s)#", line, maxsplit=1)[0].split()
        if not fields:
            continue
        if len(fields) > 2:
            raise ConfigError(f"--sources {path}, line {number}: expected 'SOURCE [NAME]', found {len(fields)} "
                              f"fields: {line.strip()!r}")
        name = fields[1] if len(fields) == 2 else None
        if name is not None:
            check_stream_name(name, f"--sources {path}, line {number}")
        entries.append((fields[0], name))
    if not entries:
        raise ConfigError(f"--sources {path}: expected at least one source line, found none")
    return entries


_STREAM_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def check_stream_name(name: str, where: str) -> None:
    """Stream names become ZeroMQ topics and file-name parts: letters, digits, ``_ . -``."""
    if not _STREAM_NAME.fullmatch(name) or name in (".", ".."):
        raise ConfigError(f"{where}: stream name {name!r} is not usable, expected 1-64 letters, digits, '_', '.' or '-'")


def stream_names(entries: list[tuple[str, str | None]]) -> list[str]:
    """The names of ``entries``' streams: given names, else the position ("0", "1", ...);
    ``ConfigError`` for a name used twice."""
    names = [name if name is not None else str(i) for i, (_, name) in enumerate(entries)]
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise ConfigError(f"stream name {name!r} is used by sources {seen[name] + 1} and {i + 1}: "
                              f"expected a different name for each source")
        seen[name] = i
    return names


def per_stream_path(path: str, stream: str) -> str:
    """``out.mp4`` -> ``out.<stream>.mp4``: one recording per stream in a multi-stream run."""
    root, ext = os.path.splitext(path)
    return f"{root}.{stream}{ext}"
