"""MindSpore implementations of the models PMG uses: Llama-2, Stable Diffusion, CLIP.

No pipeline knowledge lives here. Importing the package sets the CPU settings that must be in
place before the first oneDNN primitive runs (see runtime.py).
"""
import os

# oneDNN picks a reference convolution on AVX-512 CPUs unless capped; latched at the first op.
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
os.environ.setdefault("GLOG_v", "3")  # MindSpore's C++ logging: errors only
