"""MindSpore implementations of the models PMG uses: Llama-2, Stable Diffusion, CLIP.

No pipeline knowledge lives here. Importing the package sets the CPU settings that must be in
place before the first oneDNN primitive runs (see runtime.py).
"""
import os

from pmg_models import kernels

# oneDNN runs MindSpore's (plain NCHW) convolutions as its reference loop on AVX-512 CPUs unless capped at
# AVX2, which also halves matmul throughput there; our native convolutions make the cap unnecessary.
# Latched at the first oneDNN primitive, so it is decided here; an explicit setting wins.
if "ONEDNN_MAX_CPU_ISA" not in os.environ and not kernels.convolutions():
    os.environ["ONEDNN_MAX_CPU_ISA"] = "AVX2"
os.environ.setdefault("GLOG_v", "3")  # MindSpore's C++ logging: errors only
