"""rtseg: real-time video instance segmentation (YOLACT / YOLACT++, SOLOv2, CenterMask).

Import cost is kept low: torch-, zmq- and OpenCV-heavy modules load when first used.
"""

from rtseg.errors import CheckpointError, ConfigError, PublishError, RtsegError, SourceError
from rtseg.structures import CompactMasks, Frame, Instances

__version__ = "0.1.0"

__all__ = [
    "CompactMasks",
    "Frame",
    "Instances",
    "RtsegError",
    "SourceError",
    "CheckpointError",
    "ConfigError",
    "PublishError",
    "Segmenter",
    "subscribe",
    "stream",
    "__version__",
]


def __getattr__(name: str):  # lazy re-exports, so `import rtseg` does not import torch or zmq
    if name == "Segmenter":
        from rtseg.segmenter import Segmenter

        return Segmenter
    if name == "stream":  # rtseg.api: the pipeline as a generator of finished frames
        from rtseg.api import stream

        return stream
    if name == "subscribe":
        from rtseg.subscriber import subscribe

        return subscribe
    raise AttributeError(f"module 'rtseg' has no attribute {name!r}")
