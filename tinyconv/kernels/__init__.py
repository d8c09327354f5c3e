"""What the fast implementations of the ops (tinyconv/ops/*_numba.py, *_cuda.py) share.

threads.py      a small persistent thread pool for the numba kernels: each op cuts its work into
                parts whose boundaries never depend on the number of threads (chunks of images for
                the convolution, channels for BatchNorm's sums, images or element ranges for the
                elementwise passes), the kernels are compiled ``nogil=True`` and the BLAS is held to
                one thread inside, so results are bit-identical for any thread count.
                ``TINYCONV_NUM_THREADS`` or ``threads.set_num_threads`` choose it.
allocator.py    glibc settings so that freed blocks are reused instead of faulted in again.
common_gpu.py   loading the CUDA C sources (cuda/*.cu) with CuPy, launching them, TF32.

Nothing here knows a layer or an op; which implementation runs is decided in tinyconv/ops/__init__.py.
"""
