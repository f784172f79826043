"""rtseg.device where no GPU is: the stage clock's interface, the pinned ring's reuse and
to_host's plain-copy fallback, the CPU paths of the stream helpers. The CUDA branches run in
``tools/gpu_check.py`` (hot-path synchronisation count, process_batch against process)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from rtseg import device as devices


@pytest.mark.parametrize("dev", ["cpu", torch.device("cpu")])
def test_the_stage_clock_gives_each_stage_the_time_since_the_mark_before(dev):
    clock = devices.stage_clock(dev)
    assert isinstance(clock, devices.HostClock)
    assert clock.seconds() == {}
    clock.mark("start")
    clock.mark("preprocess")
    x = torch.randn(64, 64)
    for _ in range(20):
        x = x @ x.T / 64
    clock.mark("inference")
    clock.mark("postprocess")
    seconds = clock.seconds()
    assert list(seconds) == ["preprocess", "inference", "postprocess"]  # mark order; "start" has no duration
    assert all(s >= 0.0 for s in seconds.values())
    total = clock._marks[-1][1] - clock._marks[0][1]
    assert sum(seconds.values()) == pytest.approx(total)  # the stages add up to the wall time


def test_the_cuda_clock_has_the_same_interface():
    for name in ("mark", "seconds"):
        assert callable(getattr(devices.CudaEventClock, name)) and callable(getattr(devices.HostClock, name))
    if not torch.cuda.is_available():
        with pytest.raises(Exception):
            devices.CudaEventClock(torch.device("cuda")).mark("start")  # needs a GPU, says torch


def test_on_a_cpu_there_is_no_stream_and_the_block_runs_unchanged():
    assert devices.worker_stream("cpu") is None
    with devices.on_worker_stream(torch.device("cpu")) as stream:
        assert stream is None
        assert torch.ones(2).sum().item() == 2.0


def test_the_ring_reuses_a_few_buffers_per_shape_and_copies_the_pixels():
    ring = devices.PinnedRing(slots=2, max_shapes=2)
    assert ring.pinned == torch.cuda.is_available()  # plain host memory where no CUDA is
    a = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    b1, i1 = ring.stage(a)
    b2, i2 = ring.stage(a + 1)
    b3, i3 = ring.stage(a + 2)
    assert (i1, i2, i3) == (0, 1, 0)
    assert b3.data_ptr() == b1.data_ptr() and b2.data_ptr() != b1.data_ptr()  # reused in turn
    assert np.array_equal(b3.numpy(), a + 2) and np.array_equal(b2.numpy(), a + 1)
    assert b1.dtype == torch.uint8 and tuple(b1.shape) == (2, 3, 3)
    f, _ = ring.stage(np.ones((4,), np.float32))  # another shape and dtype: its own buffers
    assert f.dtype == torch.float32 and f.data_ptr() != b1.data_ptr()
    ring.stage(np.ones((5,), np.float32))  # a third shape: the oldest is dropped
    assert len(ring._rings) == 2 and ((2, 3, 3), np.dtype(np.uint8).str) not in ring._rings
    with pytest.raises(ValueError, match="expected 1 <= slots <= max_slots and max_shapes >= 1, got slots 0"):
        devices.PinnedRing(slots=0)


class _Copy:
    """Stands for the CUDA event after an upload (none can be recorded without a GPU): done or not."""

    def __init__(self, done: bool) -> None:
        self.done, self.waited = done, False

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:
        self.waited = True
        self.done = True


def test_the_ring_grows_instead_of_waiting_for_a_buffer_still_being_read():
    ring = devices.PinnedRing(slots=2, max_slots=3)
    a = np.zeros((2, 2), np.uint8)
    b0, i0 = ring.stage(a)
    ring.record(a.shape, a.dtype, i0, event=_Copy(done=False))  # still in flight
    b1, i1 = ring.stage(a + 1)
    ring.record(a.shape, a.dtype, i1, event=_Copy(done=True))
    b2, _ = ring.stage(a + 2)  # the oldest (b0) is busy: a third buffer, no wait
    assert len({b0.data_ptr(), b1.data_ptr(), b2.data_ptr()}) == 3
    assert np.array_equal(b0.numpy(), a)  # the buffer being read was not overwritten
    busy = _Copy(done=False)
    ring._rings[(a.shape, a.dtype.str)][1][ring._rings[(a.shape, a.dtype.str)][0]][1] = busy
    b3, _ = ring.stage(a + 3)  # at max_slots: the oldest is waited for, then reused
    assert busy.waited and b3.data_ptr() in {b0.data_ptr(), b1.data_ptr(), b2.data_ptr()}


def test_upload_on_a_cpu_is_the_array_itself():
    image = np.zeros((4, 5, 3), np.uint8)
    t = devices.upload(image, "cpu")
    assert t.device.type == "cpu" and t.dtype == torch.uint8 and tuple(t.shape) == (4, 5, 3)
    image[0, 0, 0] = 7
    assert int(t[0, 0, 0]) == 7  # no copy on the host


def test_to_host_returns_host_tensors_as_they_are_and_keeps_order_and_none():
    a, b = torch.arange(6.0).reshape(2, 3), torch.tensor([1, 2], dtype=torch.int64)
    out = devices.to_host([a, None, b])
    assert out[1] is None
    assert torch.equal(out[0], a) and torch.equal(out[2], b) and out[2].dtype == torch.int64
    assert out[0].data_ptr() == a.data_ptr() and not out[0].requires_grad  # detached, not copied
    assert devices.to_host([]) == []
    assert "to_host" in devices.__all__  # for rtseg.postprocess.to_numpy_instances


def test_each_thread_has_its_own_ring():
    rings = []

    def grab():
        rings.append(devices._ring())

    threads = [threading.Thread(target=grab) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(r) for r in rings}) == 2 and devices._ring() is devices._ring()


# -- on a GPU (pytest -m gpu; tools/gpu_check.py runs these) ----------------------------------------------

def _cuda() -> torch.device:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    return torch.device("cuda", torch.cuda.current_device())


@pytest.mark.gpu
def test_gpu_each_thread_has_its_own_stream_and_the_block_makes_it_current():
    dev = _cuda()
    found = {}

    def work(name: str) -> None:
        with devices.on_worker_stream(dev) as stream:
            assert torch.cuda.current_stream(dev) == stream != torch.cuda.default_stream(dev)
            with devices.on_worker_stream(dev) as again:  # nested: the same stream
                assert again == stream
            found[name] = stream.cuda_stream

    threads = [threading.Thread(target=work, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(found.values())) == 2
    assert torch.cuda.current_stream(dev) == torch.cuda.default_stream(dev)  # this thread is untouched


@pytest.mark.gpu
def test_gpu_upload_to_host_and_the_clock_read_after_it_wait_for_nothing_more():
    dev = _cuda()
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    with devices.on_worker_stream(dev):
        clock = devices.stage_clock(dev)
        clock.mark("start")
        x = devices.upload(image, dev)
        y = x.float() * 2
        clock.mark("preprocess")
        z = y.sum(dim=2)
        clock.mark("inference")
        host = devices.to_host([y, None, z, torch.arange(3)])
        clock.mark("postprocess")
        assert all(ev.query() for _, ev, _ in clock._marks[:-1])  # to_host's one wait covered them
        seconds = clock.seconds()
    assert host[0].is_pinned() and host[1] is None and host[3].device.type == "cpu"
    assert torch.equal(host[0], torch.from_numpy(image).float() * 2) and torch.equal(host[2], host[0].sum(dim=2))
    assert list(seconds) == ["preprocess", "inference", "postprocess"] and min(seconds.values()) >= 0


@pytest.mark.gpu
def test_gpu_process_batch_equals_process_per_image():
    from rtseg.segmenter import Segmenter

    dev = _cuda()
    seg = Segmenter("yolact_resnet18_half_384", device=str(dev))
    images = [np.random.default_rng(i).integers(0, 256, (240, 320, 3), dtype=np.uint8) for i in range(3)]
    single = [seg.process(im)[0] for im in images]
    one = seg.process_batch(images[:1])[0][0]
    assert np.array_equal(one.boxes, single[0].boxes) and one.masks == single[0].masks
    for got, ref in zip((r[0] for r in seg.process_batch(images)), single):
        assert np.array_equal(got.class_ids, ref.class_ids)
        np.testing.assert_allclose(got.boxes, ref.boxes, atol=0.5)  # cuDNN may pick other kernels for batch 3
