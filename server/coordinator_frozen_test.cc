// A diffusion job's frozen autoencoder: fixed at submission from a finished variational
// autoencoder job, copied into the coordinator's state, named with its digest in every task and
// served to the job's sites; refused when the named job cannot serve it.
#include "common/digest.h"
#include "gmock/gmock.h"
#include "server/coordinator_test_fixture.h"

namespace fl {
namespace {

using ::testing::HasSubstr;

// A variational autoencoder job on 16 px images: widths 8, 16 give 8 x 8 latents of 8 channels.
JobSpec VaeJob() {
  JobSpec spec;
  spec.set_name("vae");
  spec.set_image_size(16);
  spec.mutable_autoencoder()->set_variational(true);
  spec.mutable_autoencoder()->add_widths(8);
  spec.mutable_autoencoder()->add_widths(16);
  spec.mutable_autoencoder()->set_latent_channels(8);
  spec.set_rounds(1);
  spec.set_min_sites(2);
  spec.set_local_steps(1);
  spec.set_batch_size(10);
  spec.set_round_deadline_seconds(30);
  spec.set_start_timeout_seconds(20);
  return spec;
}

JobSpec DiffusionJob(const std::string& autoencoder_job) {
  JobSpec spec = VaeJob();
  spec.set_name("ldm");
  spec.add_labels("a");
  spec.mutable_diffusion()->set_autoencoder_job(autoencoder_job);
  spec.mutable_diffusion()->set_latent_channels(8);
  spec.mutable_diffusion()->set_latent_size(8);
  return spec;
}

class FrozenModelTest : public CoordinatorTest {
 protected:
  absl::StatusOr<JobStatus> SubmitRaw(const JobSpec& spec) {
    return core_->SubmitJob({"op", Role::kAdmin}, spec);
  }
  // Runs the autoencoder job's one round with both sites' updates; returns its id once DONE.
  std::string FinishedVae() {
    absl::StatusOr<JobStatus> vae = SubmitRaw(VaeJob());
    EXPECT_TRUE(vae.ok()) << vae.status();
    const Task ta = a_->Next(), tb = b_->Next();
    EXPECT_TRUE(Upload(a_->who(), ta, Update(1, 4, 6), 5, {}).ok());
    EXPECT_TRUE(Upload(b_->who(), tb, Update(3, 2, 0), 15, {}).ok());
    for (SiteStream* site : {a_.get(), b_.get()}) {  // the final evaluation
      const Task final_task = site->Next();
      MetricsReport report;
      report.set_job_id(final_task.job_id());
      report.set_round(final_task.round());
      report.set_test_images(10);
      Metric* l1 = report.add_metrics();
      l1->set_name("l1");
      l1->set_value(0.1);
      EXPECT_TRUE(core_->Report(site->who(), report).ok());
    }
    WaitForState(vae->job_id(), DONE);
    return vae->job_id();
  }
  size_t FrozenFiles() {
    return Env::Default()->ListDir(dir_ + "/frozen").value_or(std::vector<std::string>()).size();
  }
};

TEST_F(FrozenModelTest, TheSitesGetTheFinishedAutoencodersModelWithItsDigest) {
  ConnectSites();
  const std::string vae = FinishedVae();
  const TensorList trained = CommittedWeights(vae);
  absl::StatusOr<JobStatus> ldm = SubmitRaw(DiffusionJob(vae));
  ASSERT_TRUE(ldm.ok()) << ldm.status();
  EXPECT_EQ(ldm->frozen_digest(), TensorDigest(trained));
  EXPECT_EQ(ldm->frozen_round(), 1u);  // its best model, by the sites' L1
  EXPECT_TRUE(ldm->frozen_spec().autoencoder().variational());
  EXPECT_EQ(FrozenFiles(), 1u);

  // Kept across a restart, with the job's state.
  Restart();
  const Task ta = a_->Next();
  EXPECT_EQ(ta.job_id(), ldm->job_id());
  EXPECT_EQ(ta.frozen_digest(), TensorDigest(trained));
  EXPECT_EQ(ta.frozen_spec().name(), "vae");
  const TensorList frozen = Download(a_->who(), ta, /*frozen=*/true);
  EXPECT_EQ(TensorDigest(frozen), ta.frozen_digest());
  EXPECT_EQ(Download(a_->who(), ta).size(), 3u);  // the round's own model, as for any job

  // Gone once the job has ended.
  ASSERT_TRUE(core_->CancelJob({"op", Role::kAdmin}, ldm->job_id()).ok());
  EXPECT_EQ(FrozenFiles(), 0u);
}

TEST_F(FrozenModelTest, ADiffusionJobNeedsAFinishedVariationalAutoencoderJob) {
  absl::StatusOr<JobStatus> none = SubmitRaw(DiffusionJob("no-such-job"));
  EXPECT_EQ(none.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(none.status().message()), HasSubstr("there is no job no-such-job"));

  absl::StatusOr<JobStatus> queued = SubmitRaw(VaeJob());  // no site is connected: it waits
  ASSERT_TRUE(queued.ok());
  absl::StatusOr<JobStatus> early = SubmitRaw(DiffusionJob(queued->job_id()));
  EXPECT_EQ(early.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(early.status().message()), HasSubstr("finished (DONE)"));

  JobSpec one_round;
  one_round.set_rounds(1);
  const std::string classifier = Submit(one_round);
  absl::StatusOr<JobStatus> wrong = SubmitRaw(DiffusionJob(classifier));
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(FrozenFiles(), 0u);
}

TEST_F(FrozenModelTest, AJobWithoutAFrozenModelServesNone) {
  ConnectSites();
  JobSpec one_round;
  one_round.set_rounds(1);
  Submit(one_round);
  const Task ta = a_->Next();
  EXPECT_TRUE(ta.frozen_digest().empty());
  DownloadRequest request;
  request.set_job_id(ta.job_id());
  request.set_round(ta.round());
  request.set_frozen(true);
  absl::Status refused = core_->Download(
      a_->who(), request, [](const TensorChunk&) { return true; }, [] { return false; });
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fl
