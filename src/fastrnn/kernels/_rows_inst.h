/* The rows of _cellmath_rows.h for float and double, named for the ISA whose
 * _simd_*.h is in force (FRV_SUFFIX): included by _ktable.h once per ISA. */
#define FR_ROWS_CAT_(a, b) a##_##b
#define FR_ROWS_CAT(a, b) FR_ROWS_CAT_(a, b)

#define FR_T float
#define FR_NAME(name) FR_ROWS_CAT(name##_f, FRV_SUFFIX)
#define FR_SIGMOID fr_sigmoidf
#define FR_TANH fr_tanhf
#define FR_ROWS_TYPE fr_rows_f_t
#include "_cellmath_rows.h"
#undef FR_T
#undef FR_NAME
#undef FR_SIGMOID
#undef FR_TANH
#undef FR_ROWS_TYPE

#define FR_T double
#define FR_NAME(name) FR_ROWS_CAT(name##_d, FRV_SUFFIX)
#define FR_SIGMOID fr_sigmoid
#define FR_TANH tanh
#define FR_ROWS_TYPE fr_rows_d_t
#include "_cellmath_rows.h"
#undef FR_T
#undef FR_NAME
#undef FR_SIGMOID
#undef FR_TANH
#undef FR_ROWS_TYPE

#undef FR_ROWS_CAT
#undef FR_ROWS_CAT_
