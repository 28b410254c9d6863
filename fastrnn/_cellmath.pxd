# Pointwise cell math: gate activations and their derivatives from saved outputs
# (layer 1 of the design). Everything is inline and nogil so the time loops call it freely.
from cython cimport floating
from libc.math cimport exp, expf, tanh, tanhf


cdef inline floating sigmoid(floating x) noexcept nogil:
    # exp(-x) overflows to inf for x < -88 (float32), giving exactly 0: no NaN either way.
    if floating is float:
        return 1.0 / (1.0 + expf(-x))
    else:
        return 1.0 / (1.0 + exp(-x))


cdef inline floating tanh_(floating x) noexcept nogil:
    if floating is float:
        return tanhf(x)
    else:
        return tanh(x)


cdef inline floating dsigmoid(floating y) noexcept nogil:
    """d sigmoid / dx written with the output y = sigmoid(x)."""
    return y * (1 - y)


cdef inline floating dtanh(floating y) noexcept nogil:
    """d tanh / dx written with the output y = tanh(x)."""
    return 1 - y * y
