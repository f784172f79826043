"""``--backend triton://HOST:PORT/MODEL``: the network runs on a Triton Inference Server.

The pipeline on this machine keeps capture, preprocessing, post-processing, tracking and
publishing; each preprocessed batch goes to Triton as **one** gRPC request (tritonclient)
and the named head outputs come back as on every other backend, so post-processing,
``rtseg eval`` and publishing do not change. Triton's dynamic batcher joins the requests of
all pipelines into batched executions.

URL: ``triton://HOST:PORT/MODEL[?timeout=S&give_up=S&shm=auto|off]``

- ``timeout`` (default 5 s): a request not answered in that time is abandoned and its frame
  dropped (:class:`rtseg.backends.FrameDropped`, counted in the run's ``dropped_backend``)
  instead of stalling the stream.
- Server gone (connection refused / reset, the server restarting): the frame in hand is
  dropped and the backend reconnects with exponential back-off (0.1 s doubling to 2 s):
  each later frame waits at most one back-off step, one reconnect attempt is made, and
  the frame is dropped if it fails. A reconnect makes a fresh channel, checks that the
  model is ready and registers the shared-memory regions again (a restarted server has
  forgotten them). After ``give_up`` seconds (default 60) without a successful request the
  run ends with one error line.
- ``shm`` (default ``auto``): when the server is on this machine (a loopback host), inputs
  and outputs travel through POSIX system shared memory (``tritonclient.utils.shared_memory``;
  one input and one output region per inference thread) instead of inside the gRPC
  messages. When registration fails (a server in a container without this machine's
  ``/dev/shm``, or one that protects the shared-memory endpoint) the backend logs it once
  and sends tensors inside the requests.

Before the first frame, the model's metadata is checked against the rtseg model's: one
image input ``[-1 or B, 3, H, W]`` of FP32/FP16 and the head outputs it returns (names and
per-image shapes, ``-1`` accepted). A server that cannot be reached, a model it does not
have and a mismatch each end the run with one error line before any frame is read.

A family with a second stage runs it on the same server too (:class:`TritonStage2`, model
``<MODEL>_stage2``, one request per frame from post-processing); a server without that model is
one error line at start-up saying what to do (re-export the repository, upgrade ``rtseg serve``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import numpy as np
import torch

from rtseg.errors import ConfigError, EngineError, FrameDropped

log = logging.getLogger("rtseg.backends.triton")

SCHEME = "triton://"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
BACKOFF_START = 0.1
BACKOFF_MAX = 2.0

_DTYPES = {"FP32": (np.float32, torch.float32), "FP16": (np.float16, torch.float16)}


@dataclass(frozen=True)
class TritonURL:
    host: str
    port: int
    model: str
    timeout: float = 5.0
    give_up: float = 60.0
    shm: str = "auto"

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"triton://{self.address}/{self.model}"


def parse_triton_url(url: str) -> TritonURL:
    """``triton://HOST:PORT/MODEL[?timeout=S&give_up=S&shm=auto|off]`` or :class:`ConfigError`."""
    expected = "expected triton://HOST:PORT/MODEL, e.g. triton://127.0.0.1:8001/yolact_resnet18_half_384"
    if not isinstance(url, str) or not url.startswith(SCHEME):
        raise ConfigError(f"backend URL must start with triton://, got {url!r}; {expected}")
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    model = parts.path.strip("/")
    if not parts.hostname or port is None or not model or "/" in model:
        raise ConfigError(f"cannot read backend URL '{url}': {expected}")
    options = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    unknown = set(options) - {"timeout", "give_up", "shm"}
    if unknown:
        raise ConfigError(f"backend URL '{url}': unknown option(s) {', '.join(sorted(unknown))}; "
                          "expected timeout=SECONDS, give_up=SECONDS, shm=auto|off")
    values = {}
    for key in ("timeout", "give_up"):
        if key in options:
            try:
                values[key] = float(options[key])
            except ValueError:
                values[key] = -1.0
            if not values[key] > 0:
                raise ConfigError(f"backend URL '{url}': {key} must be seconds > 0, got '{options[key]}'")
    shm = options.get("shm", "auto")
    if shm not in ("auto", "off"):
        raise ConfigError(f"backend URL '{url}': shm must be auto or off, got '{shm}'")
    return TritonURL(parts.hostname, port, model, shm=shm, **values)


@dataclass
class TritonStats:
    """What the backend did: requests, drops and their causes, reconnects."""

    requests: int = 0
    dropped_timeout: int = 0
    dropped_unavailable: int = 0
    reconnects: int = 0
    shm_used: bool = False
    last_error: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class _Regions:
    """One thread's input and output shared-memory regions (registered per server generation)."""

    def __init__(self, prefix: str, in_bytes: int, out_bytes: int) -> None:
        import tritonclient.utils.shared_memory as shm

        self.shm = shm
        tag = f"{prefix}_{threading.get_ident():x}"
        self.names = (f"{tag}_in", f"{tag}_out")
        self.sizes = (in_bytes, out_bytes)
        self.handles = [shm.create_shared_memory_region(n, "/" + n, s) for n, s in zip(self.names, self.sizes)]
        self.generation = -1

    def register(self, client) -> None:
        for name, size in zip(self.names, self.sizes):
            try:
                client.unregister_system_shared_memory(name)
            except Exception:  # noqa: BLE001 - not registered on this (restarted) server
                pass
            client.register_system_shared_memory(name, "/" + name, size)

    def destroy(self, client) -> None:
        for name, handle in zip(self.names, self.handles):
            if client is not None:
                try:
                    client.unregister_system_shared_memory(name)
                except Exception:  # noqa: BLE001 - the server may be gone
                    pass
            try:
                self.shm.destroy_shared_memory_region(handle)
            except Exception:  # noqa: BLE001
                pass


class TritonBackend:
    """``backend(batch) -> {name: tensor}`` over a Triton server's gRPC endpoint.

    Args:
        url: ``triton://HOST:PORT/MODEL[?...]`` (see the module docstring).
        model: the rtseg model the segmenter runs (its name is only used in messages; the
            server's model is the URL's).
        expected_input: ``(3, H, W)`` the rtseg model takes.
        expected_outputs: ``{name: per-image shape}`` of the rtseg model's head outputs.
        device: where outputs are returned.
    """

    name = "triton"

    def __init__(self, url: str, *, model: str, expected_input: tuple[int, int, int],
                 expected_outputs: dict[str, tuple[int, ...]], device: torch.device) -> None:
        self.url = parse_triton_url(url)
        try:
            import tritonclient.grpc as grpcclient
            from tritonclient.utils import InferenceServerException
        except ImportError:
            raise EngineError("--backend triton:// needs tritonclient: pip install 'rtseg[triton]'") from None
        self._grpc = grpcclient
        self._error_type = InferenceServerException
        self.device = device
        self.rtseg_model = model
        self.expected_input = tuple(expected_input)
        self.expected_outputs = {k: tuple(v) for k, v in expected_outputs.items()}
        self.output_names = list(self.expected_outputs)
        self.stats = TritonStats()
        self._lock = threading.Lock()  # client swaps, reconnect state
        self._generation = 0  # bumped at each reconnect: shared-memory regions re-register
        self._down_since: float | None = None
        self._next_attempt = 0.0
        self._backoff = BACKOFF_START
        self._local = threading.local()
        self._all_regions: list[_Regions] = []
        self._shm_prefix = f"rtseg_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self._use_shm = self.url.shm == "auto" and self.url.host in LOOPBACK
        self.client = self._connect_checked()

    # -- connection and checks ---------------------------------------------------------
    def _new_client(self):
        # reconnect back-off is rtseg's own (a fresh channel per reconnect), so gRPC's own
        # (up to 120 s between attempts by default) never delays the first try after a restart
        return self._grpc.InferenceServerClient(self.url.address, channel_args=[
            ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000)])

    def _connect_checked(self):
        client = self._new_client()
        where = f"Triton server at {self.url.address} (gRPC)"
        try:
            live = client.is_server_live(client_timeout=self.url.timeout)
        except self._error_type as exc:
            raise EngineError(f"cannot reach the {where}: {_short(exc)}; start one with "
                              f"'rtseg serve --model {self.rtseg_model} --port {self.url.port}' or check the URL") from None
        if not live:
            raise EngineError(f"the {where} answers but is not live")
        try:
            metadata = client.get_model_metadata(self.url.model, as_json=True, client_timeout=self.url.timeout)
        except self._error_type as exc:
            raise EngineError(f"the {where} has no model '{self.url.model}'{self._model_list(client)}: {_short(exc)}") from None
        try:
            ready = client.is_model_ready(self.url.model, client_timeout=self.url.timeout)
        except self._error_type as exc:
            ready = False
        if not ready:
            raise EngineError(f"model '{self.url.model}' on the {where} is not ready (still loading, or failed to load)")
        self._check_metadata(metadata)
        return client

    def _model_list(self, client) -> str:
        try:
            index = client.get_model_repository_index(as_json=True, client_timeout=self.url.timeout)
        except Exception:  # noqa: BLE001 - a protected endpoint: no list, the error still says what is missing
            return ""
        names = sorted({m.get("name", "") for m in index.get("models", [])} - {""})
        return f" (it has: {', '.join(names)})" if names else " (it has no models)"

    def _check_metadata(self, metadata: dict) -> None:
        where = f"model '{self.url.model}' on {self.url.address}"
        inputs = metadata.get("inputs", [])
        if len(inputs) != 1:
            raise EngineError(f"{where} takes {len(inputs)} inputs ({', '.join(i.get('name', '?') for i in inputs)}); "
                              f"rtseg's {self.rtseg_model} sends one image batch [B, {', '.join(map(str, self.expected_input))}]")
        inp = inputs[0]
        shape = [int(d) for d in inp.get("shape", [])]
        if inp.get("datatype") not in _DTYPES:
            raise EngineError(f"{where} takes input '{inp.get('name')}' as {inp.get('datatype')}, expected FP32 or FP16")
        if len(shape) != 4 or any(e != -1 and e != x for e, x in zip(shape[1:], self.expected_input)):
            raise EngineError(f"{where} takes input '{inp.get('name')}' of shape {shape}, but {self.rtseg_model} "
                              f"sends [B, {', '.join(map(str, self.expected_input))}]: is it the same model and input size?")
        outputs = {o.get("name"): o for o in metadata.get("outputs", [])}
        missing = [n for n in self.output_names if n not in outputs]
        if missing:
            raise EngineError(f"{where} lacks the head output(s) {', '.join(missing)} that {self.rtseg_model}'s "
                              f"post-processing reads (it returns {', '.join(map(str, outputs)) or 'none'})")
        for name in self.output_names:
            got = [int(d) for d in outputs[name].get("shape", [])][1:]
            want = self.expected_outputs[name]
            if len(got) != len(want) or any(g != -1 and g != w for g, w in zip(got, want)):
                raise EngineError(f"{where} returns '{name}' of per-image shape {got}, {self.rtseg_model} expects "
                                  f"{list(want)}: is it the same model?")
        self.input_name = inp["name"]
        self.input_dtype = inp["datatype"]
        self.fixed_batch = shape[0] if shape[0] != -1 else None

    # -- outage handling ---------------------------------------------------------------
    def _mark_down(self, exc) -> None:
        with self._lock:
            now = time.monotonic()
            if self._down_since is None:
                self._down_since = now
                self._backoff = BACKOFF_START
                self._next_attempt = now + self._backoff
                log.warning("Triton server %s unreachable (%s): dropping frames, reconnecting with back-off",
                            self.url.address, _short(exc))
            self.stats.last_error = _short(exc)

    def _ensure_up(self) -> None:
        """Return when the server is (believed) up; else wait at most one back-off step, try
        once to reconnect, and raise :class:`FrameDropped` if that fails."""
        if self._down_since is None:
            return
        with self._lock:
            if self._down_since is None:  # another thread reconnected meanwhile
                return
            now = time.monotonic()
            if now - self._down_since > self.url.give_up:
                raise EngineError(f"Triton server {self.url.address} unreachable for more than {self.url.give_up:g} s "
                                  f"(last error: {self.stats.last_error}); giving up")
            wait = self._next_attempt - now
            if wait > 0:
                time.sleep(wait)
            client = self._new_client()
            try:
                ok = (client.is_server_live(client_timeout=self.url.timeout)
                      and client.is_model_ready(self.url.model, client_timeout=self.url.timeout))
            except self._error_type as exc:
                ok = False
                self.stats.last_error = _short(exc)
            if not ok:
                self._backoff = min(self._backoff * 2, BACKOFF_MAX)
                self._next_attempt = time.monotonic() + self._backoff
                try:
                    client.close()
                except Exception:  # noqa: BLE001
                    pass
                raise FrameDropped(f"Triton server {self.url.address} still unreachable")
            old, self.client = self.client, client
            self._generation += 1
            self._down_since = None
            self.stats.reconnects += 1
            log.warning("reconnected to Triton server %s (model %s)", self.url.address, self.url.model)
        try:
            old.close()
        except Exception:  # noqa: BLE001
            pass

    # -- inference ---------------------------------------------------------------------
    def _regions(self, batch: int, client) -> _Regions | None:
        if not self._use_shm:
            return None
        regions = getattr(self._local, "regions", None)
        itemsize = np.dtype(_DTYPES[self.input_dtype][0]).itemsize
        in_bytes = batch * int(np.prod(self.expected_input)) * itemsize
        out_bytes = batch * sum(int(np.prod(s)) for s in self.expected_outputs.values()) * 4
        try:
            if regions is None or regions.sizes[0] < in_bytes or regions.sizes[1] < out_bytes:
                if regions is not None:
                    regions.destroy(client)
                regions = _Regions(self._shm_prefix, in_bytes, out_bytes)
                with self._lock:
                    self._all_regions.append(regions)
                self._local.regions = regions
            if regions.generation != self._generation:
                regions.register(client)
                regions.generation = self._generation
            return regions
        except self._error_type as exc:
            if _is_unavailable(exc):
                raise
            log.warning("Triton server %s refused system shared memory (%s): sending tensors inside the requests",
                        self.url.address, _short(exc))
        except Exception as exc:  # noqa: BLE001 - /dev/shm unusable here
            log.warning("system shared memory unavailable (%s): sending tensors inside the requests", _short(exc))
        self._use_shm = False
        return None

    def __call__(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        found = tuple(batch.shape)
        if len(found) != 4 or found[1:] != self.expected_input:
            raise EngineError(f"Triton backend takes batches [B, {', '.join(map(str, self.expected_input))}], got {list(found)}")
        if self.fixed_batch is not None and found[0] != self.fixed_batch:
            raise EngineError(f"model '{self.url.model}' on {self.url.address} takes batch {self.fixed_batch}, got {found[0]}")
        self._ensure_up()
        np_dtype, torch_dtype = _DTYPES[self.input_dtype]
        x = np.ascontiguousarray(batch.detach().to("cpu", torch_dtype).numpy())
        client, generation = self.client, self._generation
        try:
            regions = self._regions(found[0], client)
            inp = self._grpc.InferInput(self.input_name, list(found), self.input_dtype)
            outputs = [self._grpc.InferRequestedOutput(n) for n in self.output_names]
            offsets = {}
            if regions is not None:
                regions.shm.set_shared_memory_region(regions.handles[0], [x])
                inp.set_shared_memory(regions.names[0], x.nbytes)
                offset = 0
                for out, name in zip(outputs, self.output_names):
                    nbytes = found[0] * int(np.prod(self.expected_outputs[name])) * 4
                    out.set_shared_memory(regions.names[1], nbytes, offset=offset)
                    offsets[name] = offset
                    offset += nbytes
            else:
                inp.set_data_from_numpy(x)
            result = client.infer(self.url.model, [inp], outputs=outputs, client_timeout=self.url.timeout)
        except self._error_type as exc:
            self._handle_error(exc, generation)
            raise  # not reached: _handle_error always raises
        with self.stats.lock:
            self.stats.requests += 1
            self.stats.shm_used = regions is not None
        out: dict[str, torch.Tensor] = {}
        for name in self.output_names:
            if regions is not None:
                meta = result.get_output(name)
                array = regions.shm.get_contents_as_numpy(regions.handles[1], np.float32, list(meta.shape),
                                                          offset=offsets[name]).copy()
            else:
                array = result.as_numpy(name)  # a read-only view of the response's bytes
                array = np.array(array, dtype=np.float32)  # owned and writable (torch warns on read-only)
            out[name] = torch.from_numpy(np.asarray(array, dtype=np.float32)).to(self.device)
        return out

    def _handle_error(self, exc, generation: int, model: str | None = None) -> None:
        message = _short(exc)
        if "DEADLINE_EXCEEDED" in str(exc.status()) or "Deadline Exceeded" in message:
            with self.stats.lock:
                self.stats.dropped_timeout += 1
            raise FrameDropped(f"Triton request timed out after {self.url.timeout:g} s") from None
        if _is_unavailable(exc) or "shared memory region" in message or generation != self._generation:
            # server gone or restarted (a restarted server no longer knows our regions)
            with self.stats.lock:
                self.stats.dropped_unavailable += 1
            self._mark_down(exc)
            raise FrameDropped(f"Triton server {self.url.address} unavailable: {message}") from None
        raise EngineError(f"Triton server {self.url.address} refused the request for '{model or self.url.model}': "
                          f"{message}") from None

    def close(self) -> None:
        with self._lock:
            regions, self._all_regions = self._all_regions, []
        for r in regions:
            r.destroy(self.client if self._down_since is None else None)
        try:
            self.client.close()
        except Exception:  # noqa: BLE001
            pass

    def __del__(self) -> None:  # shared-memory segments outlive the process unless unlinked
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


#: Triton datatypes of the stage-2 tensors (float32 feature maps / masks, int64 class ids)
_STAGE2_DTYPES = {torch.float32: "FP32", torch.int64: "INT64"}


class TritonStage2:
    """A family's second stage served by the Triton server of ``backend`` as model
    ``<model>_stage2`` (:func:`rtseg.export.triton_repo.stage2_model_name`; written by
    ``rtseg export --format triton-repo`` and served by ``rtseg serve``): the
    :data:`rtseg.families.base.Stage2` callable post-processing takes,
    ``stage2({name: tensor}) -> {name: float32 tensor on device}``, as
    :class:`rtseg.backends.onnxruntime_backend.OnnxRuntimeStage2`.

    One gRPC request per frame, tensors inside the request (one frame's ``K`` RoIs: small). It
    shares ``backend``'s connection and outage handling: a server gone or a request timed out
    drops the frame (:class:`FrameDropped`) and ``backend`` reconnects.

    Args:
        backend: the stage-1 :class:`TritonBackend` (its server, client and options).
        expected_inputs / expected_outputs: ``{name: (Triton datatype, shape with -1 for K)}`` of
            the rtseg model's stage-2 module; the server's model metadata is checked against them
            at construction (a server without the model is one :class:`EngineError` saying what to do).
    """

    name = "triton"

    def __init__(self, backend: TritonBackend, *, expected_inputs: dict[str, tuple[str, tuple[int, ...]]],
                 expected_outputs: dict[str, tuple[str, tuple[int, ...]]]) -> None:
        from rtseg.export.triton_repo import stage2_model_name

        self.backend = backend
        self.model = stage2_model_name(backend.url.model)
        self.device = backend.device
        self.input_names = tuple(expected_inputs)
        self.output_names = tuple(expected_outputs)
        self.expected_inputs = {k: (d, tuple(v)) for k, (d, v) in expected_inputs.items()}
        self.expected_outputs = {k: (d, tuple(v)) for k, (d, v) in expected_outputs.items()}
        self.requests = 0
        self._check(backend.client)

    def _check(self, client) -> None:
        url = self.backend.url
        where = f"Triton server at {url.address}"
        rtseg_model = self.backend.rtseg_model
        try:
            metadata = client.get_model_metadata(self.model, as_json=True, client_timeout=url.timeout)
            ready = client.is_model_ready(self.model, client_timeout=url.timeout)
        except self.backend._error_type as exc:
            raise EngineError(f"the {where} serves '{url.model}' but not its second stage '{self.model}' "
                              f"({_short(exc)}), which {rtseg_model} needs: re-export the repository with 'rtseg export "
                              f"--model {rtseg_model} --format triton-repo DIR' (it writes {self.model} beside {url.model}) "
                              "or serve with an 'rtseg serve' that serves stage 2 (upgrade rtseg)") from None
        if not ready:
            raise EngineError(f"model '{self.model}' on the {where} is not ready (still loading, or failed to load)")
        where = f"model '{self.model}' on {url.address}"
        for kind, expected in (("inputs", self.expected_inputs), ("outputs", self.expected_outputs)):
            found = {t.get("name"): t for t in metadata.get(kind, [])}
            missing = [n for n in expected if n not in found]
            if missing:
                raise EngineError(f"{where} lacks the stage-2 {kind[:-1]}(s) {', '.join(missing)} of {rtseg_model} "
                                  f"(it has {', '.join(map(str, found)) or 'none'}): is it the same model?")
            for name, (dtype, shape) in expected.items():
                got = [int(d) for d in found[name].get("shape", [])]
                if found[name].get("datatype") != dtype or len(got) != len(shape) or any(
                        g != -1 and w != -1 and g != w for g, w in zip(got, shape)):
                    raise EngineError(f"{where} has '{name}' as {found[name].get('datatype')}{got}, {rtseg_model} "
                                      f"expects {dtype}{list(shape)}: is it the same model?")

    def __call__(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise EngineError(f"stage 2 takes inputs {list(self.input_names)}, got {sorted(inputs)}")
        backend = self.backend
        backend._ensure_up()
        client, generation = backend.client, backend._generation
        try:
            request = []
            for name in self.input_names:
                x = np.ascontiguousarray(inputs[name].detach().cpu().numpy())
                inp = backend._grpc.InferInput(name, list(x.shape), self.expected_inputs[name][0])
                inp.set_data_from_numpy(x)
                request.append(inp)
            result = client.infer(self.model, request, client_timeout=backend.url.timeout,
                                  outputs=[backend._grpc.InferRequestedOutput(n) for n in self.output_names])
        except backend._error_type as exc:
            backend._handle_error(exc, generation, model=self.model)
            raise  # not reached: _handle_error always raises
        with backend.stats.lock:
            self.requests += 1
        # np.array: owned and writable (the response's bytes are read-only, torch warns on them)
        return {n: torch.from_numpy(np.array(result.as_numpy(n), dtype=np.float32)).to(self.device)
                for n in self.output_names}


def _is_unavailable(exc) -> bool:
    """A transport failure (server gone, restarting, stub crashed) rather than a refused request."""
    return any(s in str(exc.status() or "") for s in ("UNAVAILABLE", "CANCELLED", "INTERNAL", "UNKNOWN"))


def _short(exc) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
