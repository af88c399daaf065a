#include "common/config.h"

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace fl {
namespace {

constexpr char kJob[] =
    R"pb(
  name: "cxr" model: "smallcnn" labels: "cardiomegaly" labels: "effusion_left" rounds: 3
    )pb";

TEST(ConfigTest, JobDefaultsFilled) {
  auto spec = ParseTextProto<JobSpec>(kJob, "job");
  ASSERT_TRUE(spec.ok()) << spec.status();
  auto valid = ValidateJobSpec(*spec);
  ASSERT_TRUE(valid.ok()) << valid.status();
  EXPECT_EQ(valid->head_mode(), HEAD_MODE_LABEL);
  EXPECT_EQ(valid->server_optimizer().kind(), FEDAVG);
  EXPECT_EQ(valid->batch_size(), 32u);
  EXPECT_EQ(valid->min_sites(), 1u);
}

TEST(ConfigTest, UnknownFieldRefusedWithItsName) {
  auto spec = ParseTextProto<JobSpec>("name: \"x\" roundz: 3", "job.conf");
  ASSERT_FALSE(spec.ok());
  EXPECT_NE(spec.status().message().find("roundz"), std::string::npos) << spec.status();
  EXPECT_NE(spec.status().message().find("job.conf"), std::string::npos);
}

TEST(ConfigTest, InvalidValuesNameTheField) {
  auto spec = ParseTextProto<JobSpec>(kJob, "job");
  ASSERT_TRUE(spec.ok());
  JobSpec bad = *spec;
  bad.set_fraction(1.5);
  EXPECT_NE(ValidateJobSpec(bad).status().message().find("'fraction'"), std::string::npos);
  bad = *spec;
  bad.add_labels("cardiomegaly");
  EXPECT_NE(ValidateJobSpec(bad).status().message().find("'labels'"), std::string::npos);
  bad = *spec;
  bad.mutable_dp()->set_enabled(true);
  bad.mutable_dp()->set_delta(1e-6);
  EXPECT_NE(ValidateJobSpec(bad).status().message().find("'dp'"), std::string::npos);
  bad = *spec;
  bad.mutable_local_optimizer()->set_name("lbfgs");
  EXPECT_NE(ValidateJobSpec(bad).status().message().find("local_optimizer.name"),
            std::string::npos);
  bad = *spec;
  bad.set_trim_fraction(0.5);
  EXPECT_NE(ValidateJobSpec(bad).status().message().find("'trim_fraction'"), std::string::npos);
  bad = *spec;
  bad.set_aggregation(static_cast<Aggregation>(42));
  EXPECT_NE(ValidateJobSpec(bad).status().message().find("'aggregation'"), std::string::npos);
  bad = *spec;
  bad.set_initial_model("models/pretrained.safetensors");
  EXPECT_NE(ValidateJobSpec(bad).status().message().find("'initial_model'"), std::string::npos);
  EXPECT_DOUBLE_EQ(ValidateJobSpec(*spec)->trim_fraction(), 0.1);        // unset means 0.1
  EXPECT_EQ(ValidateJobSpec(*spec)->weighting(), WEIGHTING_TRAIN_SIZE);  // FedAvg's n_k
  bad = *spec;
  bad.set_weighting(static_cast<Weighting>(7));
  EXPECT_NE(ValidateJobSpec(bad).status().message().find("'weighting'"), std::string::npos);
  // Job names become file names under state_dir: no path separators or leading dots.
  for (const char* name : {"../x", "a/b", ".hidden", "-x", "a b"}) {
    bad = *spec;
    bad.set_name(name);
    EXPECT_NE(ValidateJobSpec(bad).status().message().find("'name'"), std::string::npos) << name;
  }
  bad = *spec;
  bad.set_name("dp-eps0.5_run2");
  EXPECT_TRUE(ValidateJobSpec(bad).ok());
  bad = *spec;
  bad.mutable_server_optimizer()->set_momentum(1.0);
  EXPECT_NE(ValidateJobSpec(bad).status().message().find("server_optimizer.momentum"),
            std::string::npos);
  bad.mutable_server_optimizer()->set_momentum(0.9);
  EXPECT_TRUE(ValidateJobSpec(bad).ok());
  bad.mutable_server_optimizer()->set_kind(FEDADAM);  // FedAdam has beta1
  EXPECT_NE(ValidateJobSpec(bad).status().message().find("server_optimizer.momentum"),
            std::string::npos);
  bad = *spec;
  bad.mutable_early_stopping()->set_min_delta(-0.1);
  EXPECT_NE(ValidateJobSpec(bad).status().message().find("early_stopping.min_delta"),
            std::string::npos);
}

// The autoencoder names neither a classifier nor labels; its stages must divide the image side.
TEST(ConfigTest, AutoencoderJobsNeedNoModelOrLabels) {
  auto spec = ParseTextProto<JobSpec>(R"pb(name: "ae"
                                           autoencoder { widths: 8 widths: 16 }
                                           image_size: 64
                                           rounds: 2)pb",
                                      "job");
  ASSERT_TRUE(spec.ok()) << spec.status();
  auto valid = ValidateJobSpec(*spec);
  ASSERT_TRUE(valid.ok()) << valid.status();
  const auto message = [](JobSpec bad) {
    return std::string(ValidateJobSpec(bad).status().message());
  };
  JobSpec bad = *spec;
  bad.add_labels("cardiomegaly");
  EXPECT_NE(message(bad).find("'labels'"), std::string::npos);
  bad = *spec;
  bad.set_model("resnet18");
  EXPECT_NE(message(bad).find("'model'"), std::string::npos);
  bad = *spec;
  bad.set_image_size(34);  // two stride-2 stages need a multiple of 4
  EXPECT_NE(message(bad).find("multiple of 4"), std::string::npos) << message(bad);
  bad = *spec;
  bad.mutable_autoencoder()->add_widths(4);
  EXPECT_NE(message(bad).find("autoencoder.widths"), std::string::npos);
  bad = *spec;
  bad.set_head_mode(HEAD_MODE_SITE);
  EXPECT_NE(message(bad).find("'head_mode'"), std::string::npos);
  // A classifier still needs both.
  auto classifier = ParseTextProto<JobSpec>(R"pb(name: "c" rounds: 1 labels: "x")pb", "job");
  EXPECT_NE(ValidateJobSpec(*classifier).status().message().find("'model'"), std::string::npos);
}

TEST(ConfigTest, VariationalAutoencoderJobs) {
  auto spec = ParseTextProto<JobSpec>(R"pb(name: "vae"
                                           autoencoder { variational: true kl_weight: 1e-5 }
                                           image_size: 64
                                           rounds: 2)pb",
                                      "job");
  ASSERT_TRUE(spec.ok()) << spec.status();
  auto valid = ValidateJobSpec(*spec);
  ASSERT_TRUE(valid.ok()) << valid.status();
  const auto message = [](JobSpec bad) {
    return std::string(ValidateJobSpec(bad).status().message());
  };
  JobSpec bad = *spec;
  bad.set_image_size(36);  // the default four widths downsample x8
  EXPECT_NE(message(bad).find("multiple of 8"), std::string::npos) << message(bad);
  bad.mutable_autoencoder()->add_widths(8);
  bad.mutable_autoencoder()->add_widths(16);
  bad.mutable_autoencoder()->add_widths(32);  // x4
  EXPECT_TRUE(ValidateJobSpec(bad).ok()) << message(bad);
  bad = *spec;
  bad.mutable_autoencoder()->set_kl_weight(-1);
  EXPECT_NE(message(bad).find("autoencoder.kl_weight"), std::string::npos);
  bad = *spec;
  bad.mutable_autoencoder()->set_variational(false);  // a KL weight without a KL term
  EXPECT_NE(message(bad).find("autoencoder.kl_weight"), std::string::npos);
}

TEST(ConfigTest, DiffusionJobs) {
  auto spec = ParseTextProto<JobSpec>(
      R"pb(name: "ldm"
           diffusion { autoencoder_job: "vae-1" latent_channels: 8 latent_size: 8 }
           labels: "cardiomegaly"
           image_size: 64
           rounds: 2)pb",
      "job");
  ASSERT_TRUE(spec.ok()) << spec.status();
  auto valid = ValidateJobSpec(*spec);
  ASSERT_TRUE(valid.ok()) << valid.status();
  const auto message = [](JobSpec bad) {
    return std::string(ValidateJobSpec(bad).status().message());
  };
  JobSpec bad = *spec;
  bad.clear_labels();  // an unconditional model
  EXPECT_TRUE(ValidateJobSpec(bad).ok()) << message(bad);
  bad = *spec;
  bad.mutable_diffusion()->clear_autoencoder_job();
  EXPECT_NE(message(bad).find("diffusion.autoencoder_job"), std::string::npos);
  bad = *spec;
  bad.mutable_diffusion()->clear_latent_channels();
  EXPECT_NE(message(bad).find("diffusion.latent_channels"), std::string::npos);
  bad = *spec;
  bad.mutable_diffusion()->set_latent_size(24);  // 64 / 24 is not a power of 2
  EXPECT_NE(message(bad).find("diffusion.latent_size"), std::string::npos);
  bad = *spec;
  for (uint32_t w : {16, 32, 32, 64, 64}) bad.mutable_diffusion()->add_widths(w);  // 8 / 16
  EXPECT_NE(message(bad).find("multiple of 16"), std::string::npos) << message(bad);
  bad = *spec;
  bad.mutable_diffusion()->set_embedding_width(20);
  EXPECT_NE(message(bad).find("diffusion.embedding_width"), std::string::npos);
  bad = *spec;
  bad.mutable_diffusion()->set_beta_end(0.001);  // below beta_start
  EXPECT_NE(message(bad).find("diffusion.beta_end"), std::string::npos);
  bad = *spec;
  bad.mutable_diffusion()->set_condition_dropout(1.5);
  EXPECT_NE(message(bad).find("diffusion.condition_dropout"), std::string::npos);
  bad = *spec;
  bad.mutable_diffusion()->set_sample_steps(2000);  // more than T
  EXPECT_NE(message(bad).find("diffusion.sample_steps"), std::string::npos);
  bad = *spec;
  bad.set_model("resnet18");
  EXPECT_NE(message(bad).find("'model'"), std::string::npos);
  bad = *spec;
  bad.set_head_mode(HEAD_MODE_SITE);
  EXPECT_NE(message(bad).find("'head_mode'"), std::string::npos);
}

TEST(ConfigTest, ClientConfigRequiresTlsAndData) {
  auto config = ParseTextProto<ClientConfig>(R"pb(coordinator_address: "localhost:7443")pb", "c");
  ASSERT_TRUE(config.ok());
  EXPECT_NE(ValidateClientConfig(*config).status().message().find("tls.ca_file"),
            std::string::npos);
  config->mutable_tls()->set_ca_file("ca");
  config->mutable_tls()->set_cert_file("c");
  config->mutable_tls()->set_key_file("k");
  config->set_data_dir("d");
  config->set_labels_csv("l");
  config->set_state_dir("s");
  config->set_device("tpu");
  EXPECT_NE(ValidateClientConfig(*config).status().message().find("'device'"), std::string::npos);
  config->set_device("");
  auto valid = ValidateClientConfig(*config);
  ASSERT_TRUE(valid.ok()) << valid.status();
  EXPECT_EQ(valid->coordinator_name(), "coordinator");
  EXPECT_DOUBLE_EQ(valid->test_fraction(), 0.2);
  // The workloads a site takes are models/spec.h's names.
  config->mutable_policy()->add_workloads("diffusion");
  EXPECT_TRUE(ValidateClientConfig(*config).ok());
  config->mutable_policy()->add_workloads("gan");
  EXPECT_NE(ValidateClientConfig(*config).status().message().find(
                "unknown workload 'gan' (known: classification, autoencoder, diffusion)"),
            std::string::npos);
}

TEST(ConfigTest, ClientDataIsAFolderOrASourceNotBoth) {
  auto config = ParseTextProto<ClientConfig>(
      R"pb(
        coordinator_address: "localhost:7443"
        tls { ca_file: "ca" cert_file: "c" key_file: "k" }
        state_dir: "s"
        source {
          chexpert { root: "/data/CheXpert-v1.0" uncertain: UNCERTAIN_POSITIVE frontal_only: true }
          rename_labels { key: "Pleural Effusion" value: "effusion" }
        }
      )pb",
      "c");
  ASSERT_TRUE(config.ok()) << config.status();
  auto valid = ValidateClientConfig(*config);
  ASSERT_TRUE(valid.ok()) << valid.status();
  auto message = [](const ClientConfig& c) {
    return std::string(ValidateClientConfig(c).status().message());
  };
  ClientConfig both = *config;
  both.set_data_dir("/data/dicom");
  EXPECT_NE(message(both).find("'data_dir'"), std::string::npos) << message(both);
  EXPECT_NE(message(both).find("either data_dir and labels_csv or source"), std::string::npos);
  ClientConfig no_root = *config;
  no_root.mutable_source()->mutable_mimic_cxr();
  EXPECT_NE(message(no_root).find("source.mimic_cxr.root"), std::string::npos) << message(no_root);
  ClientConfig no_kind = *config;
  no_kind.mutable_source()->clear_chexpert();
  EXPECT_NE(message(no_kind).find("names no kind"), std::string::npos) << message(no_kind);
  ClientConfig empty_rename = *config;
  (*empty_rename.mutable_source()->mutable_rename_labels())["Edema"] = "";
  EXPECT_NE(message(empty_rename).find("source.rename_labels"), std::string::npos);
  // Neither: the folder's fields are required, as before.
  ClientConfig neither = *config;
  neither.clear_source();
  EXPECT_NE(message(neither).find("'data_dir'"), std::string::npos) << message(neither);
  ClientConfig cache = *config;
  cache.set_pixel_cache_mib(1u << 30);
  EXPECT_NE(message(cache).find("'pixel_cache_mib'"), std::string::npos) << message(cache);
  cache.set_pixel_cache_mib(512);
  EXPECT_TRUE(ValidateClientConfig(cache).ok());
  // An unknown source kind is refused by the parser, naming it.
  auto unknown = ParseTextProto<ClientConfig>(R"pb(source { dicomweb { root: "x" } })pb", "c");
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(std::string(unknown.status().message()).find("dicomweb"), std::string::npos);
  // A PACS needs its host (the rest is checked where the source is opened, client/pacs.h).
  ClientConfig pacs = *config;
  pacs.mutable_source()->mutable_pacs();
  EXPECT_NE(message(pacs).find("source.pacs.host"), std::string::npos) << message(pacs);
}

TEST(ConfigTest, CoordinatorAddressMustHavePort) {
  CoordinatorConfig config;
  config.set_listen_address("localhost");
  EXPECT_NE(ValidateCoordinatorConfig(config).status().message().find("listen_address"),
            std::string::npos);
}

TEST(ConfigTest, RevokedCertificatesMustBeFingerprints) {
  CoordinatorConfig config;
  config.set_listen_address("0.0.0.0:7443");
  config.set_state_dir("s");
  config.mutable_tls()->set_ca_file("ca");
  config.mutable_tls()->set_cert_file("c");
  config.mutable_tls()->set_key_file("k");
  config.add_revoked_certificates(std::string(64, 'A'));
  auto valid = ValidateCoordinatorConfig(config);
  ASSERT_TRUE(valid.ok()) << valid.status();
  EXPECT_EQ(valid->revoked_certificates(0), std::string(64, 'a'));  // compared in lowercase
  config.add_revoked_certificates("alice");
  EXPECT_NE(ValidateCoordinatorConfig(config).status().message().find("revoked_certificates"),
            std::string::npos);
}

TEST(ConfigTest, RoundRetryDefaultsAndRanges) {
  auto parsed = ParseTextProto<CoordinatorConfig>(
      R"pb(listen_address: "0.0.0.0:7443"
           state_dir: "s"
           tls { ca_file: "ca" cert_file: "c" key_file: "k" })pb",
      "coordinator.conf");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  auto valid = ValidateCoordinatorConfig(*parsed);
  ASSERT_TRUE(valid.ok()) << valid.status();
  EXPECT_EQ(valid->round_retry().initial_seconds(), 1);
  EXPECT_EQ(valid->round_retry().max_seconds(), 60);
  EXPECT_EQ(valid->round_retry().attempts(), 3u);
  CoordinatorConfig config = *parsed;
  config.mutable_round_retry()->set_initial_seconds(0);  // set to 0: retry at once
  EXPECT_EQ(ValidateCoordinatorConfig(config)->round_retry().initial_seconds(), 0);
  config.mutable_round_retry()->set_initial_seconds(120);  // max follows a larger initial
  EXPECT_EQ(ValidateCoordinatorConfig(config)->round_retry().max_seconds(), 120);
  for (auto [field, change] : std::vector<std::pair<std::string, std::function<void(RoundRetry&)>>>{
           {"round_retry.initial_seconds", [](RoundRetry& r) { r.set_initial_seconds(-1); }},
           {"round_retry.max_seconds", [](RoundRetry& r) { r.set_max_seconds(0.5); }},
           {"round_retry.attempts", [](RoundRetry& r) { r.set_attempts(5000); }}}) {
    config = *parsed;
    change(*config.mutable_round_retry());
    EXPECT_NE(ValidateCoordinatorConfig(config).status().message().find(field), std::string::npos)
        << field;
  }
}

TEST(ConfigTest, MissingFileNamed) {
  auto config = LoadClientConfig("/nonexistent/client.conf");
  EXPECT_NE(config.status().message().find("/nonexistent/client.conf"), std::string::npos);
}

}  // namespace
}  // namespace fl
