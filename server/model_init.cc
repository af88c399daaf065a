#include "server/model_init.h"

#include <algorithm>
#include <cmath>

#include "common/safetensors.h"
#include "common/status.h"
#include "models/model.h"

namespace fl {

absl::StatusOr<ModelInit> InitModelFromRegistry(const JobSpec& spec) {
  ModelSpec model_spec;
  model_spec.name = spec.model();
  model_spec.in_channels = static_cast<int>(spec.in_channels());
  model_spec.image_size = static_cast<int>(spec.image_size());
  model_spec.num_outputs = spec.labels_size();
  ASSIGN_OR_RETURN(std::shared_ptr<ClassifierImpl> model, CreateModel(model_spec, spec.seed()));
  if (!spec.initial_model().empty()) {
    absl::StatusOr<TensorList> weights = ReadSafetensors(spec.initial_model());
    absl::Status loaded = weights.ok() ? LoadWeights(*model, *weights) : weights.status();
    if (!loaded.ok()) {
      return absl::Status(loaded.code(), absl::StrCat("initial_model ", spec.initial_model(),
                                                      " (", spec.model(), "): ", loaded.message()));
    }
    for (const NamedTensor& w : *weights) {
      if (!std::all_of(w.data.begin(), w.data.end(), [](float v) { return std::isfinite(v); })) {
        return absl::InvalidArgumentError(absl::StrCat(
            "initial_model ", spec.initial_model(), ": tensor ", w.name, " is not finite"));
      }
    }
  }
  try {
    return ModelInit{ExtractWeights(*model), model->head_prefix()};
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("initialising model ", spec.model(), ": ", e.what()));
  }
}

}  // namespace fl
