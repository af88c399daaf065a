// fl-model-dump MODEL OUT_DIR: writes, for the interop check (check_model.py),
//   OUT_DIR/model.safetensors   the freshly created model's weights
//   (in_channels 1, image_size 64,
//                               num_outputs 8, seed 7),
//   OUT_DIR/input.safetensors   "input": a fixed pseudo-random batch [2, 1, 64,
//   64], OUT_DIR/output.safetensors  "output": the model's eval-mode logits for
//   that batch [2, 8].
#include <cstring>
#include <iostream>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/safetensors.h"
#include "common/status.h"
#include "common/torch_pch.h"
#include "models/model.h"

namespace fl {
namespace {

NamedTensor ToNamed(const std::string& name, const torch::Tensor& tensor) {
  torch::Tensor cpu = tensor.detach().to(torch::kCPU, torch::kFloat32).contiguous();
  NamedTensor out;
  out.name = name;
  out.shape.assign(cpu.sizes().begin(), cpu.sizes().end());
  out.data.resize(static_cast<size_t>(cpu.numel()));
  std::memcpy(out.data.data(), cpu.data_ptr<float>(), out.byte_size());
  return out;
}

absl::Status Dump(const std::string& name, const std::string& dir) {
  ASSIGN_OR_RETURN(std::shared_ptr<ModelImpl> model,
                   CreateModel(ClassifierSpec(name, 1, 64, 8), 7));
  RETURN_IF_ERROR(WriteSafetensors(dir + "/model.safetensors", ExtractWeights(*model),
                                   {{"format", "pt"}, {"model", name}}));
  try {
    at::Generator gen = at::detail::createCPUGenerator(1234);
    torch::Tensor input = torch::randn({2, 1, 64, 64}, gen, torch::kFloat32);
    model->eval();
    torch::NoGradGuard no_grad;
    torch::Tensor output = model->forward(input);
    RETURN_IF_ERROR(WriteSafetensors(dir + "/input.safetensors", {ToNamed("input", input)}));
    return WriteSafetensors(dir + "/output.safetensors", {ToNamed("output", output)});
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("running ", name, ": ", e.what_without_backtrace()));
  }
}

}  // namespace
}  // namespace fl

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: fl-model-dump MODEL OUT_DIR\n";
    return 2;
  }
  absl::Status status = fl::Dump(argv[1], argv[2]);
  if (!status.ok()) {
    std::cerr << "fl-model-dump: " << status << "\n";
    return 1;
  }
  return 0;
}
