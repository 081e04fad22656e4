// Shared by csrc/cpu and csrc/cuda: lets one inline function serve as host and device code.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define MEDMIX_HOST_DEVICE __host__ __device__
#else
#define MEDMIX_HOST_DEVICE
#endif
