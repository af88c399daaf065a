#include "server/model_init.h"

#include <algorithm>
#include <cmath>

#include "common/safetensors.h"
#include "common/status.h"
#include "models/model.h"

namespace fl {

absl::StatusOr<ModelInit> InitModelFromRegistry(const JobSpec& spec) {
  ASSIGN_OR_RETURN(ModelSpec model_spec, ModelSpecFor(spec));
  ASSIGN_OR_RETURN(std::shared_ptr<ModelImpl> model, CreateModel(model_spec, spec.seed()));
  if (!spec.initial_model().empty()) {
    absl::StatusOr<TensorList> weights = ReadSafetensors(spec.initial_model());
    absl::Status loaded = weights.ok() ? LoadWeights(*model, *weights) : weights.status();
    if (!loaded.ok()) {
      return absl::Status(loaded.code(), absl::StrCat("initial_model ", spec.initial_model(), " (",
                                                      model_spec.name, "): ", loaded.message()));
    }
    for (const NamedTensor& w : *weights) {
      if (!std::all_of(w.data.begin(), w.data.end(), [](float v) { return std::isfinite(v); })) {
        return absl::InvalidArgumentError(absl::StrCat("initial_model ", spec.initial_model(),
                                                       ": tensor ", w.name, " is not finite"));
      }
    }
  }
  try {
    return ModelInit{ExtractWeights(*model), model->head_prefix()};
  } catch (const std::exception& e) {
    return absl::InternalError(
        absl::StrCat("initialising model ", model_spec.name, ": ", e.what()));
  }
}

}  // namespace fl
