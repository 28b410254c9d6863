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
                                       memory_limit="400MiB", dashboard_address=":0",
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


# ---------------------------------------------------------------------------- training


def _data(rng, N=23, T=9, I=3, out=2, stepwise=False):
    x = rng.standard_normal((T, N, I))
    y = rng.standard_normal((T, N, out) if stepwise else (N, out))
    lengths = rng.integers(2, T + 1, N)
    return x, y, lengths


def _one_process(model, x, y, lengths, epochs, batch_size, seed, make_opt, clip):
    opt = make_opt(model)
    losses = []
    N = x.shape[1]
    for epoch in range(epochs):
        order = np.arange(N) if seed is None else np.random.default_rng((seed, epoch)).permutation(N)
        for s in range(-(-N // batch_size)):
            b = order[s * batch_size:(s + 1) * batch_size]
            ys = y[:, b] if y.ndim == 3 else y[b]
            losses.append(model.train_step((x[:, b], ys, [int(n) for n in lengths[b]]), opt,
                                           clip))
    return losses


def _cluster(n):
    distributed = pytest.importorskip("distributed")
    return distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                    dashboard_address=":0", silence_logs=40)


@pytest.mark.parametrize("stepwise", [False, True], ids=["many_to_one", "many_to_many"])
def test_fit_on_1_2_3_workers_equals_train_step_on_the_global_batches(stepwise):
    from fastrnn.optim import Adam
    distributed = pytest.importorskip("distributed")
    rng = np.random.default_rng(2)
    x, y, lengths = _data(rng, stepwise=stepwise)
    cls = models.ManyToMany if stepwise else models.ManyToOne
    make = lambda: cls("lstm", 3, 5, 2, num_layers=2, loss="mse", dtype=np.float64,  # noqa: E731
                       seed=1)
    make_opt = lambda m: Adam(m.params, lr=0.01)  # noqa: E731
    ref = make()
    want = _one_process(ref, x, y, lengths, 2, 8, 5, make_opt, 0.5)
    for n in (1, 2, 3):
        with _cluster(n) as cluster, distributed.Client(cluster) as client:
            m = make()
            dx = da.from_array(x, chunks=(9, 6, 3))
            dy = da.from_array(y, chunks=((9, 6, 2) if stepwise else (6, 2)))
            got = fd.DataParallel(m, client).fit(dx, dy, epochs=2, batch_size=8,
                                                 optimizer=make_opt(m), clip=0.5,
                                                 lengths=lengths, shuffle_seed=5,
                                                 progress=False)
        np.testing.assert_allclose(got, want, rtol=1e-9, err_msg=f"{n} workers")
        for (k, a), b in zip(_items(m.state_dict()), _values(ref.state_dict())):
            np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10, err_msg=f"{n} workers {k}")


def _items(tree, prefix=""):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _items(v, prefix + k + ".")
        else:
            yield prefix + k, v


def _values(tree):
    return [v for _, v in _items(tree)]


def test_a_worker_killed_during_fit_loses_no_step(tmp_path):
    """A worker process exits (os._exit) after the third step: its chunks and tasks are
    recomputed elsewhere, and the final weights are those of a run without the fault; the
    checkpoint of the last epoch resumes a new fit where it stopped."""
    import os

    from fastrnn.optim import SGD
    distributed = pytest.importorskip("distributed")
    rng = np.random.default_rng(3)
    x, y, lengths = _data(rng, N=30)
    make = lambda: models.ManyToOne("gru", 3, 4, 2, dtype=np.float64, seed=2)  # noqa: E731
    ref = make()
    want = _one_process(ref, x, y, lengths, 2, 6, None, lambda m: SGD(m.params, lr=0.1), None)

    with _cluster(2) as cluster, distributed.Client(cluster) as client:
        victim = sorted(client.scheduler_info()["workers"])[0]

        class KillingSGD(SGD):
            def step(self, grads):
                super().step(grads)
                if self.steps == 3:
                    client.run(os._exit, 1, workers=[victim], on_error="ignore")

        m = make()
        got = fd.DataParallel(m, client).fit(
            da.from_array(x, chunks=(9, 5, 3)), da.from_array(y, chunks=(5, 2)), epochs=2,
            batch_size=6, optimizer=KillingSGD(m.params, lr=0.1), lengths=lengths,
            checkpoint=tmp_path / "ckpt.npz", progress=False)
        assert victim not in client.scheduler_info()["workers"]
    np.testing.assert_allclose(got, want, rtol=1e-9)
    for a, b in zip(_values(m.state_dict()), _values(ref.state_dict())):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)
    # a new driver resumes after the saved epoch: nothing left to do for epochs=2, one
    # more epoch for epochs=3
    with _cluster(1) as cluster, distributed.Client(cluster) as client:
        m2 = make()
        more = fd.DataParallel(m2, client).fit(
            da.from_array(x, chunks=(9, 5, 3)), da.from_array(y, chunks=(5, 2)), epochs=3,
            batch_size=6, optimizer=SGD(m2.params, lr=0.1), lengths=lengths,
            checkpoint=tmp_path / "ckpt.npz", progress=False)
    assert len(more) == 5
    ref_more = _one_process(make(), x, y, lengths, 3, 6, None, lambda m: SGD(m.params, lr=0.1),
                            None)
    np.testing.assert_allclose(more, ref_more[10:], rtol=1e-9)


def test_fit_refuses_bad_input_before_sending_tasks():
    from fastrnn.optim import SGD
    m = models.ManyToOne("rnn", 3, 4, 2, dtype=np.float64)
    dp = fd.DataParallel(m, client=None)  # no task is sent before the checks
    x = da.zeros((5, 10, 3), chunks=(5, 5, 3))
    y = da.zeros((10, 2), chunks=(5, 2))
    opt = SGD(m.params, lr=0.1)
    with pytest.raises(TypeError, match="x and y must be dask arrays"):
        dp.fit(np.zeros((5, 10, 3)), y, epochs=1, batch_size=2, optimizer=opt)
    with pytest.raises(ValueError, match=r"x is chunked along axis 0"):
        dp.fit(x.rechunk((1, 5, 3)), y, epochs=1, batch_size=2, optimizer=opt)
    with pytest.raises(ValueError, match="chunked alike along the batch"):
        dp.fit(x, y.rechunk((2, 2)), epochs=1, batch_size=2, optimizer=opt)
    with pytest.raises(ValueError, match="lengths must be chunked"):
        dp.fit(x, y, epochs=1, batch_size=2, optimizer=opt,
               lengths=da.ones(10, chunks=2, dtype=int))
    with pytest.raises(TypeError, match="the model computes in float64"):
        dp.fit(x.astype(np.float32), y, epochs=1, batch_size=2, optimizer=opt)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        dp.fit(x, y, epochs=1, batch_size=0, optimizer=opt)
    with pytest.raises(TypeError, match="ManyToOne or ManyToMany"):
        fd.DataParallel(models.OneToMany("gru", 3, 4), client=None)
