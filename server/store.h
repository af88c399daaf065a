// The coordinator's durable state in one SQLite file (WAL mode, synchronous FULL): jobs with their
// round history, the site registry, update receipts and an append-only audit log. Model weights
// live in checkpoint files referenced from here with their checksum.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "fl/federation.pb.h"

struct sqlite3;

namespace fl {

struct Checkpoint {
  std::string path;
  uint32_t crc32c = 0;
  uint32_t round = 0;  // rounds completed when it was written
};

// A validated update that was folded into a round's aggregate; its spool file is kept until the
// round commits, so a restarted coordinator can fold it again instead of asking for it again.
struct Receipt {
  std::string job_id;
  uint32_t round = 0;
  uint32_t attempt = 0;
  std::string site;
  UploadHeader header;
  double scale = 1.0;  // norm clipping factor applied when folding
  uint64_t bytes = 0;
  std::string spool;  // path of the spooled update
};

class Store {
 public:
  // Opens or creates `path`. Fails if the file is not a usable SQLite database.
  static absl::StatusOr<std::unique_ptr<Store>> Open(const std::string& path);
  ~Store();

  // OK if the database answers a one-row read of each table the coordinator needs (readiness:
  // the state is open and usable); else the SQLite error, naming what failed.
  absl::Status Check();

  // Inserts or replaces a job's status.
  absl::Status PutJob(const JobStatus& job);
  absl::StatusOr<std::vector<JobStatus>> Jobs();

  // Commits a finished round in one transaction: the job's new status and its checkpoint.
  absl::Status CommitRound(const JobStatus& job, const Checkpoint& checkpoint);
  // The newest checkpoint of a job, or NOT_FOUND.
  absl::StatusOr<Checkpoint> LatestCheckpoint(const std::string& job_id);

  absl::Status PutSite(const SiteInfo& site);
  absl::StatusOr<std::vector<SiteInfo>> Sites();

  // Records that (job, round, attempt, site) is being aggregated; ALREADY_EXISTS if it already
  // was. A round that is run again (no quorum, damaged aggregate, restart) has a new attempt.
  absl::Status AddReceipt(const Receipt& receipt);
  // Every receipt of a round, oldest attempt first.
  absl::StatusOr<std::vector<Receipt>> Receipts(const std::string& job_id, uint32_t round);

  // Appends to the audit log: who (certificate identity) did what.
  absl::Status Audit(const std::string& identity, const std::string& action,
                     const std::string& detail);
  // The last `limit` audit entries, oldest first, as "time identity action detail".
  absl::StatusOr<std::vector<std::string>> AuditLog(int limit);

 private:
  explicit Store(sqlite3* db) : db_(db) {}

  absl::Mutex mu_;
  sqlite3* db_;  // owned
};

}  // namespace fl
