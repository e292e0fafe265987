"""numba kernels behind the public functions (private).

Each module holds the loop bodies of one layer family; ``_twins`` turns every
body into a serial and a parallel dispatcher and picks between them by size.
"""
