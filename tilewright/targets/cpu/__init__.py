"""Native CPU target: C++/OpenMP kernels built with the system compiler and loaded with ctypes."""
