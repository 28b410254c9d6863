"""fastrnn on Dask, measured: batch inference (sequences a second) with
``fastrnn.distributed.predict`` on a LocalCluster of 1 and 2 single-thread worker
processes against a plain loop of ``model(x)`` over the same chunks in this process (on 1
and on all threads), and the time of a DataParallel training step on 1 and 2 workers
against ``model.train_step`` in one process, with Dask's per-step overhead (the same step
on a model too small to cost anything) shown apart.

    python benchmarks/dask_cluster.py [--quick]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np


def _best(f, repeats):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    os.environ.pop("OPENBLAS_CORETYPE", None)
    import dask.array as da
    import distributed

    import fastrnn
    from fastrnn import distributed as fd
    from fastrnn import models
    from fastrnn.optim import SGD

    repeats = 2 if args.quick else 3
    T, B, H, chunk = (50, 256, 128, 32) if args.quick else (100, 1024, 256, 64)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, H)).astype(np.float32)
    layer = fastrnn.LSTM(H, H, seed=0)
    print(f"fastrnn {fastrnn.__version__}, kernels {fastrnn.get_cpu_capability()}, "
          f"{os.cpu_count()} CPUs")
    print(f"\ninference: LSTM T={T}, H={H}, {B} sequences in chunks of {chunk}")
    for threads in (1, os.cpu_count()):
        fastrnn.set_num_threads(threads)
        t = _best(lambda: [layer(x[:, i:i + chunk]) for i in range(0, B, chunk)], repeats)
        print(f"  model(x) loop, {threads} thread(s): {B / t:10.0f} sequences/s")
    fastrnn.set_num_threads(os.cpu_count())
    dx = da.from_array(x, chunks=(T, chunk, H))
    for workers in (1, 2):
        with distributed.LocalCluster(n_workers=workers, threads_per_worker=1,
                                      processes=True, dashboard_address=":0",
                                      silence_logs=40) as cluster, \
                distributed.Client(cluster) as client:
            dxp = client.persist(dx)
            distributed.wait(dxp)
            fd.predict(layer, dxp)[0].compute()  # workers warm

            def kept():  # results left on the workers (as to_zarr / store write them)
                out = client.persist(fd.predict(layer, dxp)[0])
                distributed.wait(out)
                del out

            t = _best(kept, repeats)
            print(f"  predict on {workers} worker process(es): {B / t:10.0f} sequences/s "
                  f"(results kept on the workers)")
            t = _best(lambda: fd.predict(layer, dxp)[0].compute(), repeats)
            print(f"  predict on {workers} worker process(es): {B / t:10.0f} sequences/s "
                  f"(results gathered to this process)")

    print(f"\ntraining: ManyToOne LSTM T={T}, H={H}, a global batch of {4 * chunk}")
    N = 8 * chunk
    xt = rng.standard_normal((T, N, H)).astype(np.float32)
    yt = rng.standard_normal((N, 1)).astype(np.float32)
    for size, what in ((H, "the model"), (2, "a 2-unit model (Dask's per-step overhead)")):
        xs = xt[:, :, :size] if size != H else xt
        make = lambda: models.ManyToOne("lstm", size, size, 1, seed=0)  # noqa: E731
        m = make()
        opt = SGD(m.params, lr=0.01)
        steps = 2 * (N // (4 * chunk))
        t0 = time.perf_counter()
        for s in range(steps):
            b = np.arange(s * 4 * chunk, (s + 1) * 4 * chunk) % N
            m.train_step((xs[:, b], yt[b]), opt)
        one = (time.perf_counter() - t0) / steps
        print(f"  {what}: one process {one * 1e3:8.1f} ms a step")
        for workers in (1, 2):
            with distributed.LocalCluster(n_workers=workers, threads_per_worker=1,
                                          processes=True, dashboard_address=":0",
                                          silence_logs=40) as cluster, \
                    distributed.Client(cluster) as client:
                m = make()
                dp = fd.DataParallel(m, client)
                kw = dict(batch_size=4 * chunk, optimizer=SGD(m.params, lr=0.01),
                          progress=False)
                dxs = da.from_array(np.ascontiguousarray(xs), chunks=(T, chunk, size))
                dys = da.from_array(yt, chunks=(chunk, 1))
                dp.fit(dxs, dys, epochs=1, **kw)  # workers warm
                t0 = time.perf_counter()
                losses = dp.fit(dxs, dys, epochs=2, **kw)
                per = (time.perf_counter() - t0) / len(losses)
                print(f"  {what}: {workers} worker process(es) {per * 1e3:8.1f} ms a step")


if __name__ == "__main__":
    main()
