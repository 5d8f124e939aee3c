{
  "variables": {
    "mergevq_sources": [
      "native/core/tensor.cc",
      "native/core/op.cc",
      "native/core/parallel.cc",
      "native/cpu/tensor_ops.cc",
      "native/cpu/bench_ops.cc",
      "native/cpu/lfq.cc",
      "native/cpu/merge.cc",
      "native/napi/addon.cc"
    ],
    "mergevq_cuda_sources": [
      "native/cuda/runtime.cu",
      "native/cuda/lfq.cu",
      "native/cuda/merge.cu"
    ]
  }
}
