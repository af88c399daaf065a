#include "common/config.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <set>
#include <sstream>

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/status.h"
#include "models/spec.h"

namespace fl {
namespace {

class ErrorCollector : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int line, int column, const std::string& message) override {
    if (first_.empty()) first_ = absl::StrCat("line ", line + 1, ":", column + 1, ": ", message);
  }
  void AddWarning(int, int, const std::string&) override {}
  const std::string& first() const { return first_; }

 private:
  std::string first_;
};

absl::Status Invalid(const std::string& field, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat("config field '", field, "' ", why));
}

absl::Status RequireNonEmpty(const std::string& field, const std::string& value) {
  if (value.empty()) return Invalid(field, "is required");
  return absl::OkStatus();
}

absl::Status InRange(const std::string& field, double value, double lo, double hi) {
  if (!(value >= lo && value <= hi)) {
    return Invalid(field, absl::StrCat("must be in [", lo, ", ", hi, "], got ", value));
  }
  return absl::OkStatus();
}

absl::Status ValidateTls(const std::string& prefix, TlsConfig* tls) {
  RETURN_IF_ERROR(RequireNonEmpty(prefix + ".ca_file", tls->ca_file()));
  RETURN_IF_ERROR(RequireNonEmpty(prefix + ".cert_file", tls->cert_file()));
  RETURN_IF_ERROR(RequireNonEmpty(prefix + ".key_file", tls->key_file()));
  if (tls->reload_seconds() == 0) tls->set_reload_seconds(60);
  return InRange(prefix + ".reload_seconds", tls->reload_seconds(), 1, 86400);
}

absl::Status ValidateAddress(const std::string& field, const std::string& address) {
  RETURN_IF_ERROR(RequireNonEmpty(field, address));
  size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon + 1 == address.size()) {
    return Invalid(field, absl::StrCat("must be host:port, got '", address, "'"));
  }
  return absl::OkStatus();
}

absl::Status ValidateOptimizers(JobSpec& spec) {
  LocalOptimizer* local = spec.mutable_local_optimizer();
  if (local->name().empty()) local->set_name("sgd");
  if (local->name() != "sgd" && local->name() != "adam") {
    return Invalid("local_optimizer.name",
                   absl::StrCat("must be sgd or adam, got '", local->name(), "'"));
  }
  if (local->learning_rate() == 0) local->set_learning_rate(0.01);
  RETURN_IF_ERROR(InRange("local_optimizer.learning_rate", local->learning_rate(), 1e-9, 10));
  ServerOptimizer* server = spec.mutable_server_optimizer();
  if (server->kind() == SERVER_OPTIMIZER_UNSPECIFIED) server->set_kind(FEDAVG);
  if (server->learning_rate() == 0) {
    server->set_learning_rate(server->kind() == FEDAVG ? 1.0 : 0.01);
  }
  if (server->beta1() == 0) server->set_beta1(0.9);
  if (server->beta2() == 0) server->set_beta2(0.99);
  if (server->tau() == 0) server->set_tau(1e-3);
  RETURN_IF_ERROR(InRange("server_optimizer.learning_rate", server->learning_rate(), 1e-9, 100));
  RETURN_IF_ERROR(InRange("server_optimizer.beta1", server->beta1(), 0, 0.999999));
  RETURN_IF_ERROR(InRange("server_optimizer.beta2", server->beta2(), 0, 0.999999));
  RETURN_IF_ERROR(InRange("server_optimizer.momentum", server->momentum(), 0, 0.999));
  if (server->momentum() > 0 && server->kind() != FEDAVG) {
    return Invalid("server_optimizer.momentum",
                   "applies to FEDAVG only (FedAdam and FedYogi have beta1)");
  }
  return absl::OkStatus();
}

absl::Status ValidateEarlyStopping(const EarlyStopping& stopping) {
  RETURN_IF_ERROR(InRange("early_stopping.min_delta", stopping.min_delta(), 0, 1e9));
  return InRange("early_stopping.patience_rounds", stopping.patience_rounds(), 0, 1000000);
}

absl::Status ValidateWidths(const std::string& field,
                            const google::protobuf::RepeatedField<uint32_t>& widths) {
  if (widths.size() > 6) return Invalid(field, "at most 6 stages");
  for (uint32_t w : widths) RETURN_IF_ERROR(InRange(field, w, 8, 1024));
  return absl::OkStatus();
}

// `side` must halve `halvings` times.
absl::Status RequireMultiple(const std::string& field, uint32_t side, int halvings,
                             const std::string& of_what) {
  if (side % (1u << halvings) != 0) {
    return Invalid(field, absl::StrCat("must be a multiple of ", 1u << halvings, " for ", of_what));
  }
  return absl::OkStatus();
}

absl::Status ValidateAutoencoder(const JobSpec& spec) {
  if (!spec.labels().empty()) {
    return Invalid("labels", "must be empty for an autoencoder job (it trains on images alone)");
  }
  const AutoencoderWorkload& ae = spec.autoencoder();
  RETURN_IF_ERROR(ValidateWidths("autoencoder.widths", ae.widths()));
  RETURN_IF_ERROR(InRange("autoencoder.latent_channels", ae.latent_channels(), 0, 256));
  if (!ae.variational()) {
    if (ae.has_kl_weight()) return Invalid("autoencoder.kl_weight", "needs variational");
    const int stages = ae.widths_size() > 0 ? ae.widths_size() : 2;
    return RequireMultiple("image_size", spec.image_size(), stages,
                           absl::StrCat("an autoencoder of ", stages, " stages"));
  }
  if (ae.has_kl_weight()) RETURN_IF_ERROR(InRange("autoencoder.kl_weight", ae.kl_weight(), 0, 1e3));
  const int stages = (ae.widths_size() > 0 ? ae.widths_size() : 4) - 1;
  return RequireMultiple("image_size", spec.image_size(), stages,
                         absl::StrCat("a variational autoencoder of ", stages + 1, " widths"));
}

absl::Status ValidateDiffusion(const JobSpec& spec) {
  const DiffusionWorkload& d = spec.diffusion();
  RETURN_IF_ERROR(RequireNonEmpty("diffusion.autoencoder_job", d.autoencoder_job()));
  RETURN_IF_ERROR(InRange("diffusion.latent_channels", d.latent_channels(), 1, 256));
  RETURN_IF_ERROR(InRange("diffusion.latent_size", d.latent_size(), 1, spec.image_size()));
  const uint32_t factor = spec.image_size() / d.latent_size();
  if (spec.image_size() % d.latent_size() != 0 || (factor & (factor - 1)) != 0) {
    return Invalid("diffusion.latent_size", "must be image_size divided by a power of 2");
  }
  RETURN_IF_ERROR(ValidateWidths("diffusion.widths", d.widths()));
  const int levels = d.widths_size() > 0 ? d.widths_size() : 2;
  RETURN_IF_ERROR(RequireMultiple("diffusion.latent_size", d.latent_size(), levels - 1,
                                  absl::StrCat("a UNet of ", levels, " levels")));
  if (d.embedding_width() != 0 && (d.embedding_width() < 16 || d.embedding_width() % 8 != 0)) {
    return Invalid("diffusion.embedding_width", "must be >= 16 and a multiple of 8");
  }
  RETURN_IF_ERROR(InRange("diffusion.embedding_width", d.embedding_width(), 0, 4096));
  if (d.timesteps() != 0) RETURN_IF_ERROR(InRange("diffusion.timesteps", d.timesteps(), 2, 10000));
  const DiffusionProcess p = DiffusionProcessFor(spec);
  RETURN_IF_ERROR(InRange("diffusion.beta_start", p.beta_start, 1e-9, 0.999));
  RETURN_IF_ERROR(InRange("diffusion.beta_end", p.beta_end, p.beta_start, 0.999));
  RETURN_IF_ERROR(InRange("diffusion.condition_dropout", p.condition_dropout, 0, 1));
  RETURN_IF_ERROR(InRange("diffusion.sample_steps", p.sample_steps, 1, p.timesteps));
  RETURN_IF_ERROR(InRange("diffusion.eta", p.eta, 0, 1));
  return InRange("diffusion.guidance_scale", p.guidance_scale, 0, 100);
}

// The classifier needs a model and labels; the autoencoder names neither (its model is built
// from its own fields); diffusion names no model and any labels (the findings it conditions on).
absl::Status ValidateWorkload(JobSpec& spec) {
  if (spec.has_classification() || spec.workload_case() == JobSpec::WORKLOAD_NOT_SET) {
    RETURN_IF_ERROR(RequireNonEmpty("model", spec.model()));
    if (spec.labels().empty()) return Invalid("labels", "must name at least one label");
    return absl::OkStatus();
  }
  const std::string name = WorkloadName(spec);
  if (!spec.model().empty() && spec.model() != name) {
    return Invalid("model", absl::StrCat("must be empty for a", name == "autoencoder" ? "n " : " ",
                                         name, " job, got '", spec.model(), "'"));
  }
  if (spec.head_mode() == HEAD_MODE_SITE) {
    return Invalid("head_mode", absl::StrCat("a", name == "autoencoder" ? "n " : " ", name,
                                             " model has no label head"));
  }
  return spec.has_autoencoder() ? ValidateAutoencoder(spec) : ValidateDiffusion(spec);
}

absl::Status ValidateDp(DpSpec& dp) {
  if (!dp.enabled()) return absl::OkStatus();
  if (dp.clip_norm() == 0) dp.set_clip_norm(1.0);
  RETURN_IF_ERROR(InRange("dp.clip_norm", dp.clip_norm(), 1e-9, 1e9));
  RETURN_IF_ERROR(InRange("dp.delta", dp.delta(), 1e-300, 0.1));
  if ((dp.noise_multiplier() > 0) == (dp.target_epsilon() > 0)) {
    return Invalid("dp", "must set exactly one of noise_multiplier and target_epsilon");
  }
  return absl::OkStatus();
}

}  // namespace

template <typename T>
absl::StatusOr<T> ParseTextProto(const std::string& text, const std::string& origin) {
  T message;
  ErrorCollector errors;
  google::protobuf::TextFormat::Parser parser;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(text, &message)) {
    return absl::InvalidArgumentError(absl::StrCat(origin, ": ", errors.first()));
  }
  return message;
}

template <typename T>
absl::StatusOr<T> LoadTextProto(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read config file ", path));
  std::stringstream buffer;
  buffer << in.rdbuf();
  return ParseTextProto<T>(buffer.str(), path);
}

template absl::StatusOr<CoordinatorConfig> ParseTextProto(const std::string&, const std::string&);
template absl::StatusOr<ClientConfig> ParseTextProto(const std::string&, const std::string&);
template absl::StatusOr<AdminConfig> ParseTextProto(const std::string&, const std::string&);
template absl::StatusOr<JobSpec> ParseTextProto(const std::string&, const std::string&);
template absl::StatusOr<CoordinatorConfig> LoadTextProto(const std::string&);
template absl::StatusOr<ClientConfig> LoadTextProto(const std::string&);
template absl::StatusOr<AdminConfig> LoadTextProto(const std::string&);
template absl::StatusOr<JobSpec> LoadTextProto(const std::string&);

RoundRetry RoundRetryWithDefaults(RoundRetry retry) {
  if (!retry.has_initial_seconds()) retry.set_initial_seconds(1);
  if (!retry.has_max_seconds()) retry.set_max_seconds(std::max(60.0, retry.initial_seconds()));
  if (retry.attempts() == 0) retry.set_attempts(3);
  return retry;
}

namespace {

// Fills RoundRetry's defaults and checks its ranges.
absl::Status ValidateRoundRetry(RoundRetry* retry) {
  *retry = RoundRetryWithDefaults(*retry);
  if (!(retry->initial_seconds() >= 0 && retry->initial_seconds() <= 3600)) {
    return Invalid("round_retry.initial_seconds",
                   absl::StrCat("must be in [0, 3600], got ", retry->initial_seconds()));
  }
  if (!(retry->max_seconds() >= retry->initial_seconds() && retry->max_seconds() <= 86400)) {
    return Invalid("round_retry.max_seconds",
                   absl::StrCat("must be in [initial_seconds, 86400], got ", retry->max_seconds()));
  }
  return InRange("round_retry.attempts", retry->attempts(), 1, 1000);
}

}  // namespace

absl::StatusOr<CoordinatorConfig> ValidateCoordinatorConfig(CoordinatorConfig config) {
  RETURN_IF_ERROR(ValidateAddress("listen_address", config.listen_address()));
  RETURN_IF_ERROR(RequireNonEmpty("state_dir", config.state_dir()));
  RETURN_IF_ERROR(ValidateTls("tls", config.mutable_tls()));
  if (!config.metrics_address().empty()) {
    RETURN_IF_ERROR(ValidateAddress("metrics_address", config.metrics_address()));
  }
  if (config.chunk_bytes() == 0) config.set_chunk_bytes(1u << 20);
  RETURN_IF_ERROR(InRange("chunk_bytes", config.chunk_bytes(), 1024, 4u << 20));
  if (config.site_timeout_seconds() == 0) config.set_site_timeout_seconds(30);
  if (config.max_concurrent_transfers() == 0) config.set_max_concurrent_transfers(4);
  RETURN_IF_ERROR(InRange("max_concurrent_transfers", config.max_concurrent_transfers(), 1, 1024));
  if (config.grpc_memory_mib() == 0) config.set_grpc_memory_mib(64);
  RETURN_IF_ERROR(InRange("grpc_memory_mib", config.grpc_memory_mib(), 16, 1 << 20));
  RETURN_IF_ERROR(ValidateRoundRetry(config.mutable_round_retry()));
  for (std::string& fingerprint : *config.mutable_revoked_certificates()) {
    fingerprint = absl::AsciiStrToLower(fingerprint);
    if (fingerprint.size() != 64 ||
        fingerprint.find_first_not_of("0123456789abcdef") != std::string::npos) {
      return Invalid(
          "revoked_certificates",
          absl::StrCat("must hold SHA-256 fingerprints (64 hex digits), got '", fingerprint, "'"));
    }
  }
  return config;
}

namespace {

absl::Status ValidateSitePolicy(const ClientConfig& config) {
  const std::string& id = config.dataset_id();
  if (id.size() > 128) return Invalid("dataset_id", "must be at most 128 characters");
  for (char c : id) {
    if (!absl::ascii_isalnum(c) && !absl::StrContains("-_.:/", c)) {
      return Invalid("dataset_id",
                     absl::StrCat("may hold only letters, digits and -_.:/, got '", id, "'"));
    }
  }
  const SitePolicy& policy = config.policy();
  RETURN_IF_ERROR(InRange("policy.min_noise_multiplier", policy.min_noise_multiplier(), 0, 1e6));
  RETURN_IF_ERROR(InRange("policy.max_clip_norm", policy.max_clip_norm(), 0, 1e9));
  const std::vector<std::string> workloads = WorkloadNames();
  for (const std::string& w : policy.workloads()) {
    if (std::find(workloads.begin(), workloads.end(), w) == workloads.end()) {
      return Invalid(
          "policy.workloads",
          absl::StrCat("unknown workload '", w, "' (known: ", absl::StrJoin(workloads, ", "), ")"));
    }
  }
  return absl::OkStatus();
}

// The root (or folder) of each kind of source, by its field name under "source.".
absl::Status ValidateSourceKind(const DataSourceConfig& source) {
  switch (source.kind_case()) {
    case DataSourceConfig::kDicomFolder:
      return RequireNonEmpty("source.dicom_folder.dir", source.dicom_folder().dir());
    case DataSourceConfig::kChexpert:
      for (const std::string& csv : source.chexpert().csv_files()) {
        RETURN_IF_ERROR(RequireNonEmpty("source.chexpert.csv_files", csv));
      }
      return RequireNonEmpty("source.chexpert.root", source.chexpert().root());
    case DataSourceConfig::kMimicCxr:
      return RequireNonEmpty("source.mimic_cxr.root", source.mimic_cxr().root());
    case DataSourceConfig::kChestxray14:
      return RequireNonEmpty("source.chestxray14.root", source.chestxray14().root());
    case DataSourceConfig::kVindrCxr:
      return RequireNonEmpty("source.vindr_cxr.root", source.vindr_cxr().root());
    case DataSourceConfig::kPacs:  // the rest is checked where it is opened (client/pacs.h)
      return RequireNonEmpty("source.pacs.host", source.pacs().host());
    case DataSourceConfig::KIND_NOT_SET:
      break;
  }
  return Invalid(
      "source",
      "names no kind (dicom_folder, chexpert, mimic_cxr, chestxray14, vindr_cxr or pacs)");
}

// Either data_dir and labels_csv (a DICOM folder) or a source, not both.
absl::Status ValidateSource(const ClientConfig& config) {
  if (!config.has_source()) {
    RETURN_IF_ERROR(RequireNonEmpty("data_dir", config.data_dir()));
    return RequireNonEmpty("labels_csv", config.labels_csv());
  }
  if (!config.data_dir().empty() || !config.labels_csv().empty()) {
    return Invalid(config.data_dir().empty() ? "labels_csv" : "data_dir",
                   "set either data_dir and labels_csv or source, not both");
  }
  const DataSourceConfig& source = config.source();
  RETURN_IF_ERROR(ValidateSourceKind(source));
  for (const auto& [from, to] : source.rename_labels()) {
    if (from.empty() || to.empty()) {
      return Invalid("source.rename_labels", "names must not be empty");
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ClientConfig> ValidateClientConfig(ClientConfig config) {
  RETURN_IF_ERROR(ValidateAddress("coordinator_address", config.coordinator_address()));
  if (config.coordinator_name().empty()) config.set_coordinator_name("coordinator");
  RETURN_IF_ERROR(ValidateTls("tls", config.mutable_tls()));
  RETURN_IF_ERROR(ValidateSource(config));
  RETURN_IF_ERROR(RequireNonEmpty("state_dir", config.state_dir()));
  if (!config.metrics_address().empty()) {
    RETURN_IF_ERROR(ValidateAddress("metrics_address", config.metrics_address()));
  }
  if (config.device().empty()) config.set_device("auto");
  if (config.device() != "auto" && config.device() != "cpu" && config.device() != "cuda") {
    return Invalid("device",
                   absl::StrCat("must be auto, cpu or cuda, got '", config.device(), "'"));
  }
  if (config.budget().max_epsilon() < 0) return Invalid("budget.max_epsilon", "must be >= 0");
  if (config.budget().max_epsilon() > 0) {
    RETURN_IF_ERROR(InRange("budget.delta", config.budget().delta(), 1e-300, 0.1));
  }
  RETURN_IF_ERROR(ValidateSitePolicy(config));
  if (config.test_fraction() == 0) config.set_test_fraction(0.2);
  RETURN_IF_ERROR(InRange("test_fraction", config.test_fraction(), 0.01, 0.9));
  if (config.loader_threads() == 0) config.set_loader_threads(2);
  RETURN_IF_ERROR(InRange("loader_threads", config.loader_threads(), 1, 64));
  if (config.max_backoff_seconds() == 0) config.set_max_backoff_seconds(30);
  RETURN_IF_ERROR(InRange("pixel_cache_mib", config.pixel_cache_mib(), 0, 1 << 24));
  return config;
}

absl::StatusOr<AdminConfig> ValidateAdminConfig(AdminConfig config) {
  RETURN_IF_ERROR(ValidateAddress("coordinator_address", config.coordinator_address()));
  if (config.coordinator_name().empty()) config.set_coordinator_name("coordinator");
  RETURN_IF_ERROR(ValidateTls("tls", config.mutable_tls()));
  return config;
}

absl::StatusOr<JobSpec> ValidateJobSpec(JobSpec spec) {
  RETURN_IF_ERROR(RequireNonEmpty("name", spec.name()));
  // The name starts the job id, which names files in state_dir and labels metrics.
  for (char ch : spec.name()) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(ch)) && ch != '-' && ch != '_' &&
        ch != '.') {
      return Invalid("name", "may hold only letters, digits, '-', '_' and '.'");
    }
  }
  if (spec.name()[0] == '.' || spec.name()[0] == '-') {
    return Invalid("name", "must start with a letter, a digit or '_'");
  }
  std::set<std::string> seen;
  for (const std::string& label : spec.labels()) {
    if (label.empty() || !seen.insert(label).second) {
      return Invalid("labels", absl::StrCat("has an empty or repeated label '", label, "'"));
    }
  }
  if (spec.image_size() == 0) spec.set_image_size(224);
  RETURN_IF_ERROR(InRange("image_size", spec.image_size(), 8, 4096));
  if (spec.in_channels() == 0) spec.set_in_channels(1);
  RETURN_IF_ERROR(InRange("in_channels", spec.in_channels(), 1, 16));
  RETURN_IF_ERROR(ValidateWorkload(spec));
  if (spec.head_mode() == HEAD_MODE_UNSPECIFIED) spec.set_head_mode(HEAD_MODE_LABEL);
  RETURN_IF_ERROR(InRange("rounds", spec.rounds(), 1, 100000));
  if (spec.min_sites() == 0) spec.set_min_sites(1);
  if (spec.fraction() == 0) spec.set_fraction(1.0);
  RETURN_IF_ERROR(InRange("fraction", spec.fraction(), 1e-6, 1.0));
  if (spec.round_deadline_seconds() == 0) spec.set_round_deadline_seconds(600);
  if (spec.local_steps() == 0) spec.set_local_steps(10);
  if (spec.batch_size() == 0) spec.set_batch_size(32);
  RETURN_IF_ERROR(InRange("batch_size", spec.batch_size(), 1, 65536));
  if (spec.start_timeout_seconds() == 0) spec.set_start_timeout_seconds(120);
  RETURN_IF_ERROR(InRange("max_update_norm", spec.max_update_norm(), 0, 1e12));
  RETURN_IF_ERROR(InRange("clip_update_norm", spec.clip_update_norm(), 0, 1e12));
  if (!Aggregation_IsValid(spec.aggregation())) {
    return Invalid("aggregation", absl::StrCat("has unknown value ", spec.aggregation()));
  }
  if (spec.weighting() == WEIGHTING_UNSPECIFIED) spec.set_weighting(WEIGHTING_TRAIN_SIZE);
  if (!Weighting_IsValid(spec.weighting())) {
    return Invalid("weighting", absl::StrCat("has unknown value ", spec.weighting()));
  }
  if (spec.trim_fraction() == 0) spec.set_trim_fraction(0.1);
  if (!(spec.trim_fraction() > 0 && spec.trim_fraction() < 0.5)) {
    return Invalid("trim_fraction",
                   absl::StrCat("must be in (0, 0.5), got ", spec.trim_fraction()));
  }
  if (!spec.initial_model().empty() && spec.initial_model()[0] != '/') {
    return Invalid("initial_model",
                   absl::StrCat("must be an absolute path on the coordinator's host, got '",
                                spec.initial_model(), "'"));
  }
  RETURN_IF_ERROR(ValidateOptimizers(spec));
  RETURN_IF_ERROR(ValidateDp(*spec.mutable_dp()));
  RETURN_IF_ERROR(ValidateEarlyStopping(spec.early_stopping()));
  return spec;
}

namespace {

// Loads `path` as T and validates it; errors name the file.
template <typename T>
absl::StatusOr<T> LoadAndValidate(const std::string& path,
                                  absl::StatusOr<T> (*validate)(T config)) {
  ASSIGN_OR_RETURN(T config, LoadTextProto<T>(path));
  absl::StatusOr<T> valid = validate(std::move(config));
  if (!valid.ok()) return Annotate(valid.status(), path);
  return valid;
}

}  // namespace

absl::StatusOr<CoordinatorConfig> LoadCoordinatorConfig(const std::string& path) {
  return LoadAndValidate<CoordinatorConfig>(path, ValidateCoordinatorConfig);
}

absl::StatusOr<ClientConfig> LoadClientConfig(const std::string& path) {
  return LoadAndValidate<ClientConfig>(path, ValidateClientConfig);
}

absl::StatusOr<AdminConfig> LoadAdminConfig(const std::string& path) {
  return LoadAndValidate<AdminConfig>(path, ValidateAdminConfig);
}

}  // namespace fl
