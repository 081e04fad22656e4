"""Triton kernels and their host launchers. Importing a module here imports triton: on machines
without a GPU set TRITON_INTERPRET=1 before that import to run the kernels in the interpreter."""
