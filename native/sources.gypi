{
  "variables": {
    "mergevq_sources": [
      "native/core/tensor.cc",
      "native/core/op.cc",
      "native/core/parallel.cc",
      "native/cpu/activation.cc",
      "native/cpu/attention.cc",
      "native/cpu/bench_ops.cc",
      "native/cpu/conv.cc",
      "native/cpu/elementwise.cc",
      "native/cpu/gemm.cc",
      "native/cpu/index.cc",
      "native/cpu/kvcache.cc",
      "native/cpu/layout.cc",
      "native/cpu/lfq.cc",
      "native/cpu/linalg.cc",
      "native/cpu/loss.cc",
      "native/cpu/merge.cc",
      "native/cpu/norm.cc",
      "native/cpu/pool.cc",
      "native/cpu/optim.cc",
      "native/cpu/reduce.cc",
      "native/cpu/rope.cc",
      "native/cpu/softmax.cc",
      "native/cpu/tensor_ops.cc",
      "native/napi/addon.cc"
    ],
    "mergevq_cuda_sources": [
      "native/cuda/runtime.cu",
      "native/cuda/attention.cu",
      "native/cuda/kvcache.cu",
      "native/cuda/lfq.cu",
      "native/cuda/merge.cu"
    ]
  }
}
