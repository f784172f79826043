"""Errors a user can cause, each rendered by the CLI as one line (no traceback).

Every boundary a user can reach (a path, a URL, a checkpoint, a model name, a config
value) raises one of these with what was expected and what was found. Internal
invariants use ``assert``; those are bugs, not user errors, and keep their traceback.
"""

from __future__ import annotations


class RtsegError(Exception):
    """Base class: a user-facing error whose ``str()`` is a complete one-line message."""

    #: process exit code the CLI uses for this kind of error (documented in README)
    exit_code = 2


class SourceError(RtsegError):
    """A video source could not be opened or read (missing file, unreachable URL, no camera)."""

    exit_code = 3


class CheckpointError(RtsegError):
    """A weights file is missing, unreadable, or does not fit the chosen model."""

    exit_code = 4


class ConfigError(RtsegError):
    """An unknown model name, a malformed option value, or an inconsistent setting."""

    exit_code = 2


class PublishError(RtsegError):
    """The ZeroMQ endpoint cannot be bound or connected, or a message cannot be decoded."""

    exit_code = 5


class EngineError(RtsegError):
    """An ONNX export or TensorRT engine cannot be made or used here: an operator the target
    cannot run, a missing runtime (ONNX Runtime, TensorRT, a GPU), or an engine built for
    another machine."""

    exit_code = 6


class FrameDropped(Exception):
    """Not a user error: a backend gave up on one batch without failing the run (a remote
    call timed out, or the server is unreachable and being reconnected to). The pipeline
    counts the frame as dropped and goes on; the message says why."""
