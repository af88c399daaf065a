// A classifier's feature space: what its label head reads. The space in which flctl synth-eval
// compares real and synthetic images (FID, precision and recall), since the Inception network
// the literature uses cannot be fetched on a hospital's machines.
#pragma once

#include "absl/status/statusor.h"
#include "common/torch_pch.h"
#include "models/model.h"

namespace fl {

// The features [N, D] of images [N, C, H, W] under a classifier of the registry (smallcnn,
// tinycnn, mediumcnn, resnet9, resnet18, resnet50): the global pooling's output that the head
// `fc` maps to the logits. INVALID_ARGUMENT for a model without a label head.
absl::StatusOr<torch::Tensor> ClassifierFeatures(ModelImpl& model, const torch::Tensor& images);

}  // namespace fl
