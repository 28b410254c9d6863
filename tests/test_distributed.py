"""fastrnn.distributed.predict: the eager call's results chunk by chunk, on the local
schedulers and on a distributed LocalCluster of worker processes; the model once in the
graph; chunking errors that say how to rechunk; results stored in chunks from workers whose
memory is smaller than the data."""
import numpy as np
import pytest

import fastrnn
from fastrnn import models

da = pytest.importorskip("dask.array")
fd = pytest.importorskip("fastrnn.distributed")

TOL = dict(rtol=2e-5, atol=2e-6)


def _flat(r):
    if isinstance(r, tuple):
        for v in r:
            yield from _flat(v)
    else:
        yield r


def _same(lazy, eager, scheduler=None):
    import dask

    got = dask.compute(*_flat(lazy), scheduler=scheduler)
    want = list(_flat(eager))
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, **TOL)


@pytest.mark.parametrize("scheduler", ["threads", "sync"])
def test_predict_is_the_eager_call_chunk_by_chunk(scheduler):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((15, 11, 4)).astype(np.float32)
    lengths = rng.integers(1, 16, 11)
    for layer in (fastrnn.LSTM(4, 6, num_layers=2, bidirectional=True, seed=0),
                  fastrnn.GRU(4, 6, seed=1), fastrnn.RNN(4, 5, seed=2)):
        dx = da.from_array(x, chunks=(15, 4, 4))
        _same(fd.predict(layer, dx), layer(x), scheduler)
        _same(fd.predict(layer, dx, lengths), layer(x, lengths=list(lengths)), scheduler)
        _same(fd.predict(layer, dx, da.from_array(lengths, chunks=4)),
              layer(x, lengths=list(lengths)), scheduler)
    bf = fastrnn.GRU(4, 6, batch_first=True, seed=3)
    xb = np.ascontiguousarray(x.transpose(1, 0, 2))
    out, h = fd.predict(bf, da.from_array(xb, chunks=(5, 15, 4)))
    assert out.chunks[0] == (5, 5, 1)
    _same((out, h), bf(xb), scheduler)
    m1 = models.ManyToOne("lstm", 4, 6, 3, seed=0)
    _same(fd.predict(m1, da.from_array(x, chunks=(15, 3, 4)), lengths),
          m1.predict(x, list(lengths)), scheduler)
    m2 = models.ManyToMany("gru", 4, 6, 2, num_layers=2, seed=0)
    _same(fd.predict(m2, da.from_array(x, chunks=(15, 6, 4))), m2.predict(x), scheduler)


def test_the_model_is_one_key_of_the_graph():
    layer = fastrnn.LSTM(4, 6, seed=0)
    x = da.from_array(np.zeros((5, 12, 4), np.float32), chunks=(5, 2, 4))
    out, _ = fd.predict(layer, x)
    graph = dict(out.__dask_graph__())
    holding = [k for k, v in graph.items() if v is layer or getattr(v, "value", None) is layer]
    assert len(holding) == 1, holding
    assert out.npartitions == 6


def test_chunks_along_time_or_features_are_refused_with_the_rechunk():
    layer = fastrnn.GRU(4, 6)
    x = da.zeros((10, 8, 4), chunks=(5, 4, 4), dtype=np.float32)
    with pytest.raises(ValueError, match=r"chunked along axis 0: .*x.rechunk\(\{0: -1, 2: -1\}\)"):
        fd.predict(layer, x)
    with pytest.raises(ValueError, match="chunked along axis 2"):
        fd.predict(layer, da.zeros((10, 8, 4), chunks=(10, 4, 2), dtype=np.float32))
    with pytest.raises(TypeError, match="x must be a dask.array"):
        fd.predict(layer, np.zeros((10, 8, 4), np.float32))
    with pytest.raises(ValueError, match=r"lengths must be \(8,\)"):
        fd.predict(layer, da.zeros((10, 8, 4), chunks=(10, 4, 4), dtype=np.float32), [3, 4])
    with pytest.raises(ValueError, match="batch_first=True but the layer"):
        fd.predict(layer, da.zeros((10, 8, 4), chunks=(10, 4, 4), dtype=np.float32),
                   batch_first=True)


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    # two single-thread worker processes with little memory each (more than a chunk needs)
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       memory_limit="400MiB", dashboard_address=None,
                                       silence_logs=40)
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


def test_predict_on_worker_processes(client):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((12, 9, 4)).astype(np.float32)
    layer = fastrnn.LSTM(4, 6, num_layers=2, seed=4)
    lazy = fd.predict(layer, da.from_array(x, chunks=(12, 3, 4)))
    _same(lazy, layer(x))
    threads = client.run(lambda: fastrnn.get_num_threads())
    assert set(threads.values()) == {1}, threads  # capped at each worker's one thread


def test_results_larger_than_a_workers_memory_are_stored_in_chunks(client, tmp_path):
    """1 GB of outputs (float32 T=500 x B=8192 x 64) from workers of 400 MiB each, written
    chunk by chunk with dask's own to_npy_stack, then read back in part and checked."""
    T, B, I, H = 500, 8192, 8, 64
    layer = fastrnn.GRU(I, H, seed=5)
    x = da.random.default_rng(0).standard_normal((T, B, I), chunks=(T, 256, I),
                                                 dtype=np.float32)
    out, _ = fd.predict(layer, x)
    assert out.nbytes > 2 * 400 * 2**20
    da.to_npy_stack(str(tmp_path), out, axis=1)
    back = da.from_npy_stack(str(tmp_path))
    part = slice(256 * 7, 256 * 7 + 5)
    np.testing.assert_allclose(back[:, part].compute(), layer(x[:, part].compute())[0], **TOL)
