#include "server/model_init.h"

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
  try {
    return ModelInit{ExtractWeights(*model), model->head_prefix()};
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("initialising model ", spec.model(), ": ", e.what()));
  }
}

}  // namespace fl
