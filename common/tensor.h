// Torch-free representation of model weights as they travel and are aggregated.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace fl {

// One named float32 tensor, row-major. The name is the PyTorch parameter name.
struct NamedTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> data;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  uint64_t byte_size() const { return data.size() * sizeof(float); }
};

// A model's weights in model order (parameters, then buffers).
using TensorList = std::vector<NamedTensor>;

}  // namespace fl
