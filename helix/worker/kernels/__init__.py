"""The decoder layer's elementwise ops (RMSNorm with the residual add, RoPE,
SiLU-and-multiply): PyTorch reference ops (`torch_ops`) and fused Triton
kernels (`triton_ops`) behind one interface; `backend.select_layer_kernels`
picks one per model."""
