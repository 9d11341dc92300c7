//! CUDA kernels for both GQLA decode paths, compiled by NVRTC at run time (issue 5; empty for now).
