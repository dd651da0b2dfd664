"""``one_thread(torch)``: run the calling thread's numeric libraries single-threaded, then restore.

The batched IVF scan (index/batched_ivf.py) runs one Python worker per core, each doing
many small GEMMs and heap updates. Left to themselves the libraries would each open
their own thread team inside every worker:

- OpenBLAS: multi-threaded on these small GEMMs it is slower than one thread;
  ``openblas_set_num_threads_local`` sets the calling thread's count only.
- faiss' heap update opens an OpenMP team above 100k scores, which on a busy machine
  cost ~60 ns a score instead of 0.5 (2 threads, 50 x 2,500 scores); torch's int8 GEMM
  would do the same. Both set the calling thread's OpenMP count, and torch and faiss
  may share one libgomp, so both counts are read before either is set.
"""
from __future__ import annotations

import contextlib
import ctypes
import glob
import os
from typing import Iterator

import faiss
import numpy as np

__all__ = ["one_thread"]


def _openblas_local_threads():
    """ctypes ``openblas_set_num_threads_local`` of numpy's OpenBLAS, or None."""
    libs = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "*openblas*.so*")
    for path in glob.glob(libs):
        try:
            f = ctypes.CDLL(path).openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        f.argtypes, f.restype = [ctypes.c_int], ctypes.c_int
        return f
    return None


_SET_BLAS_LOCAL = _openblas_local_threads()


@contextlib.contextmanager
def one_thread(torch=None) -> Iterator[None]:
    """Within the block the calling thread's OpenBLAS, faiss OpenMP and (if given) torch run one
    thread each; their previous counts are restored on the way out."""
    blas_before = _SET_BLAS_LOCAL(1) if _SET_BLAS_LOCAL is not None else None
    omp_before = faiss.omp_get_max_threads()
    torch_before = torch.get_num_threads() if torch else None
    faiss.omp_set_num_threads(1)
    if torch:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if blas_before is not None:
            _SET_BLAS_LOCAL(blas_before)
        if torch:
            torch.set_num_threads(torch_before)
        faiss.omp_set_num_threads(omp_before)
