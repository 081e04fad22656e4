// Makes the shared library importable as the Python module medmix_ops._C; importing it runs the
// TORCH_LIBRARY registrations. It defines no Python functions: the ops live in torch.ops.medmix.
#include <Python.h>

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
