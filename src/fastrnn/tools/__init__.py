"""The commands beside the library: ``python -m fastrnn demo`` (:mod:`.demos`) and
``python -m fastrnn bench`` (:mod:`.bench`, with the implementations it compares in
:mod:`.peers` and its instruction-set caps in :mod:`.caps`), and the progress bar they
draw (:mod:`.progress`).

They use only fastrnn's public API (the layers, ``fastrnn.models``, ``fastrnn.optim``,
``fastrnn.diagnostics``, ``fastrnn.get_cpu_capability``), plus the one kernel diagnostic
the bench reports: the FMA peak of ``fastrnn._kernels.fma_peak``. The library imports
nothing from here.
"""
