"""Pure-torch acceleration pieces the engine builds on: CUDA-graph recording and replay
(cuda_graphs), and oneDNN CPU kernels that reproduce PyTorch's own output bit for bit (packed_conv,
fused_blocks). Nothing here knows ComfyUI; nodes/engine and nodes/host_api put them in place."""
