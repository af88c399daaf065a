// The privacy ledger of one client: a durable record, in its own SQLite file, of every training
// round's privacy cost, so the budget cap holds across restarts, crashes and jobs.
//
// Storage: one row per recorded round (job_id, dataset_id, round, q, sigma, steps, recorded_at),
// never a cached curve. Every RDP curve is recomputed from the rows with the accountant
// (rows grouped by (q, sigma) and composed in a fixed order), so it is exactly reproducible and a
// change of orders or of the accountant needs no migration. The file uses WAL journaling with
// synchronous=FULL: once Record returns, the row survives a kill -9 or a power loss.
//
// Composition: ε for a dataset sums the RDP curves of all jobs that trained on it (the same
// patients' data leaks through every job), which is what the site's cap is checked against.
//
// Dataset ids: a dataset is named by a stable id (the client config's dataset_id, or the site's
// default id kept in this file), never by where its folder is mounted. BindDataset ties each
// image (a hash of its SOP Instance UID) to one id, so the same images cannot be spent again
// under a second id: binding them under another one is refused with the id they belong to.
// Ledgers of schema version 1 named datasets by the client's data_dir; the first binding adopts
// those names as aliases of the bound id, so their rounds keep counting against it.
//
// Thread-safe; several processes may open the same file (writers wait up to 10 s for the lock).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

struct sqlite3;

namespace fl {

class PrivacyLedger {
 public:
  // What one job has spent on one dataset (or all jobs, for the dataset-wide queries).
  struct Spent {
    std::vector<double> orders;  // the accountant's RDP orders (DefaultRdpOrders())
    std::vector<double> rdp;     // composed RDP at each order; all zero when nothing is recorded
    int64_t rounds = 0;          // trainings recorded (a round trained twice counts twice)
    uint64_t steps = 0;          // DP-SGD steps over those rounds
  };

  // Opens or creates the ledger at `path` (its directory must exist). Fails with the path in the
  // message when the file cannot be opened, is not a ledger, or has a newer schema.
  static absl::StatusOr<std::unique_ptr<PrivacyLedger>> Open(const std::string& path);

  ~PrivacyLedger();
  PrivacyLedger(const PrivacyLedger&) = delete;
  PrivacyLedger& operator=(const PrivacyLedger&) = delete;

  // The site's default dataset id ("site-data-" and 16 hex digits), created on first use and
  // kept in this file, so it does not change when the data folder moves.
  absl::StatusOr<std::string> DefaultDatasetId();

  // Declares that `image_hashes` (see ImageHash in client/dataset.h) are the images of dataset
  // `dataset_id` and returns the id their costs are recorded under (`dataset_id`, or the id that
  // adopted it as an alias). Fails with FAILED_PRECONDITION, naming the other id, when any of
  // the images belongs to another dataset: the same patients would get a second budget. Adopts
  // every name of a version-1 ledger not yet bound as an alias of the returned id.
  absl::StatusOr<std::string> BindDataset(const std::string& dataset_id,
                                          const std::vector<uint64_t>& image_hashes);

  // The ids of bound datasets and the names they adopted, sorted (for `flctl privacy ledger`).
  struct DatasetInfo {
    std::string id;
    int64_t images = 0;
    std::vector<std::string> aliases;
  };
  absl::StatusOr<std::vector<DatasetInfo>> Datasets();

  // Records the cost of `round` of `job_id` on `dataset_id`: `steps` steps at sample rate `q` and
  // noise multiplier `sigma`. Call it BEFORE the round's update leaves the site; it is durable
  // when it returns OK. Call it once per training: a round trained again (after a restart, or
  // when its update was lost) is another release of the same data, with fresh noise and
  // sampling, and counts again (sending the same update again is not a new release: record
  // nothing then). REQUIRES: non-empty ids, round >= 0, q in [0, 1], sigma >= 0.
  absl::Status Record(const std::string& job_id, const std::string& dataset_id, int64_t round,
                      double q, double sigma, uint64_t steps);

  // The composed cost of `job_id` on `dataset_id`; zero (rounds == 0) when nothing is recorded.
  absl::StatusOr<Spent> Get(const std::string& job_id, const std::string& dataset_id);

  // ε at `delta` spent on `dataset_id` by `job_id`, or by all jobs when `job_id` is nullopt.
  // 0 when nothing is recorded.
  absl::StatusOr<double> Epsilon(const std::optional<std::string>& job_id,
                                 const std::string& dataset_id, double delta);

  // ε at `delta` on `dataset_id` (all jobs) if a round of `steps` steps at (q, sigma) were added:
  // compare it with the site's cap before accepting a round. Records nothing.
  absl::StatusOr<double> EpsilonIfAdded(const std::string& dataset_id, double q, double sigma,
                                        uint64_t steps, double delta);

 private:
  explicit PrivacyLedger(sqlite3* db) : db_(db) {}

  // The composed curve of the rows on `dataset_id` (and `job_id` when given).
  absl::StatusOr<Spent> Load(const std::optional<std::string>& job_id,
                             const std::string& dataset_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::string> BindLocked(const std::string& dataset_id,
                                         const std::vector<uint64_t>& image_hashes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status RecordLocked(const std::string& job_id, const std::string& dataset_id, int64_t round,
                            double q, double sigma, uint64_t steps)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Mutex mu_;
  sqlite3* const db_ ABSL_GUARDED_BY(mu_);
};

}  // namespace fl
