#include "privacy/ledger.h"

#include <sqlite3.h>

#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/sqlite.h"
#include "common/status.h"
#include "privacy/rdp_accountant.h"

namespace fl {
namespace {

constexpr int kSchemaVersion = 1;
constexpr int kBusyTimeoutMs = 10000;

constexpr char kSchema[] = R"sql(
CREATE TABLE IF NOT EXISTS rounds (
  job_id TEXT NOT NULL,
  dataset_id TEXT NOT NULL,
  round INTEGER NOT NULL,
  sample_rate REAL NOT NULL,
  noise_multiplier REAL NOT NULL,
  steps INTEGER NOT NULL,
  recorded_at_unix_us INTEGER NOT NULL,
  PRIMARY KEY (job_id, dataset_id, round)
);
CREATE INDEX IF NOT EXISTS rounds_by_dataset ON rounds (dataset_id);
)sql";

// Creates the schema, or checks that an existing file's schema is one this build reads.
absl::Status Configure(sqlite3* db) {
  SqlStatement version(db, "PRAGMA user_version");
  RETURN_IF_ERROR(version.status());
  ASSIGN_OR_RETURN(bool row, version.Step());
  const int found = row ? sqlite3_column_int(version.get(), 0) : 0;
  if (found > kSchemaVersion) {
    return absl::FailedPreconditionError(absl::StrCat(
        "privacy ledger schema version ", found, " is newer than this build's ", kSchemaVersion));
  }
  SqlTransaction txn(db);
  RETURN_IF_ERROR(txn.Begin());
  RETURN_IF_ERROR(SqliteExec(db, kSchema));
  RETURN_IF_ERROR(SqliteExec(db, absl::StrCat("PRAGMA user_version=", kSchemaVersion)));
  return txn.Commit();
}

absl::Status CheckCost(double q, double sigma, uint64_t steps) {
  if (!(q >= 0 && q <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat("sample rate q must be in [0, 1], got ", q));
  }
  if (!(sigma >= 0) || std::isinf(sigma)) {
    return absl::InvalidArgumentError(
        absl::StrCat("noise multiplier sigma must be finite and >= 0, got ", sigma));
  }
  if (steps > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return absl::InvalidArgumentError(absl::StrCat("steps too large: ", steps));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<PrivacyLedger>> PrivacyLedger::Open(const std::string& path) {
  ASSIGN_OR_RETURN(sqlite3* db, OpenSqlite(path, "privacy ledger", kBusyTimeoutMs));
  if (absl::Status status = Configure(db); !status.ok()) {
    sqlite3_close(db);
    return Annotate(status, absl::StrCat("opening privacy ledger '", path, "'"));
  }
  return std::unique_ptr<PrivacyLedger>(new PrivacyLedger(db));
}

PrivacyLedger::~PrivacyLedger() { sqlite3_close(db_); }

absl::Status PrivacyLedger::Record(const std::string& job_id, const std::string& dataset_id,
                                   int64_t round, double q, double sigma, uint64_t steps) {
  if (job_id.empty() || dataset_id.empty()) {
    return absl::InvalidArgumentError("job_id and dataset_id must not be empty");
  }
  if (round < 0) return absl::InvalidArgumentError(absl::StrCat("round must be >= 0: ", round));
  RETURN_IF_ERROR(CheckCost(q, sigma, steps));
  absl::MutexLock lock(&mu_);
  return Annotate(RecordLocked(job_id, dataset_id, round, q, sigma, steps),
                  absl::StrCat("recording round ", round, " of job '", job_id, "' on dataset '",
                               dataset_id, "'"));
}

absl::Status PrivacyLedger::RecordLocked(const std::string& job_id,
                                         const std::string& dataset_id, int64_t round, double q,
                                         double sigma, uint64_t steps) {
  SqlTransaction txn(db_);
  RETURN_IF_ERROR(txn.Begin());
  SqlStatement find(db_,
                 "SELECT sample_rate, noise_multiplier, steps FROM rounds "
                 "WHERE job_id = ?1 AND dataset_id = ?2 AND round = ?3");
  RETURN_IF_ERROR(find.status());
  find.Bind(1, job_id);
  find.Bind(2, dataset_id);
  sqlite3_bind_int64(find.get(), 3, round);
  ASSIGN_OR_RETURN(bool exists, find.Step());
  if (exists) {
    const double old_q = sqlite3_column_double(find.get(), 0);
    const double old_sigma = sqlite3_column_double(find.get(), 1);
    const int64_t old_steps = sqlite3_column_int64(find.get(), 2);
    if (old_q == q && old_sigma == sigma && old_steps == static_cast<int64_t>(steps)) {
      return absl::OkStatus();  // already recorded: the rollback leaves the ledger unchanged
    }
    return absl::AlreadyExistsError(absl::StrCat("already recorded with q=", old_q, " sigma=",
                                                 old_sigma, " steps=", old_steps));
  }
  SqlStatement insert(db_,
                   "INSERT INTO rounds (job_id, dataset_id, round, sample_rate, noise_multiplier,"
                   " steps, recorded_at_unix_us) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)");
  RETURN_IF_ERROR(insert.status());
  insert.Bind(1, job_id);
  insert.Bind(2, dataset_id);
  sqlite3_bind_int64(insert.get(), 3, round);
  sqlite3_bind_double(insert.get(), 4, q);
  sqlite3_bind_double(insert.get(), 5, sigma);
  sqlite3_bind_int64(insert.get(), 6, static_cast<int64_t>(steps));
  sqlite3_bind_int64(insert.get(), 7, absl::ToUnixMicros(absl::Now()));
  RETURN_IF_ERROR(insert.Step().status());
  return txn.Commit();
}

absl::StatusOr<PrivacyLedger::Spent> PrivacyLedger::Load(const std::optional<std::string>& job_id,
                                                         const std::string& dataset_id) {
  // One statement is one consistent snapshot; grouping by (q, sigma) in a fixed order makes the
  // composed curve independent of insertion order.
  SqlStatement rows(db_,
                 "SELECT sample_rate, noise_multiplier, SUM(steps), COUNT(*) FROM rounds "
                 "WHERE dataset_id = ?1 AND (?2 IS NULL OR job_id = ?2) "
                 "GROUP BY sample_rate, noise_multiplier "
                 "ORDER BY sample_rate, noise_multiplier");
  RETURN_IF_ERROR(rows.status());
  rows.Bind(1, dataset_id);
  if (job_id.has_value()) rows.Bind(2, *job_id);
  RdpAccountant accountant;
  Spent spent;
  while (true) {
    ASSIGN_OR_RETURN(bool row, rows.Step());
    if (!row) break;
    const int64_t steps = sqlite3_column_int64(rows.get(), 2);
    accountant.AddSteps(sqlite3_column_double(rows.get(), 0),
                        sqlite3_column_double(rows.get(), 1), static_cast<uint64_t>(steps));
    spent.steps += static_cast<uint64_t>(steps);
    spent.rounds += sqlite3_column_int64(rows.get(), 3);
  }
  spent.orders = accountant.orders();
  spent.rdp = accountant.rdp();
  return spent;
}

absl::StatusOr<PrivacyLedger::Spent> PrivacyLedger::Get(const std::string& job_id,
                                                        const std::string& dataset_id) {
  absl::MutexLock lock(&mu_);
  return Load(job_id, dataset_id);
}

absl::StatusOr<double> PrivacyLedger::Epsilon(const std::optional<std::string>& job_id,
                                              const std::string& dataset_id, double delta) {
  Spent spent;
  {
    absl::MutexLock lock(&mu_);
    ASSIGN_OR_RETURN(spent, Load(job_id, dataset_id));
  }
  RdpAccountant accountant(spent.orders);
  accountant.set_rdp(spent.rdp);
  ASSIGN_OR_RETURN(double eps, accountant.Epsilon(delta));
  return spent.rounds == 0 ? 0.0 : eps;  // nothing released, nothing spent
}

absl::StatusOr<double> PrivacyLedger::EpsilonIfAdded(const std::string& dataset_id, double q,
                                                     double sigma, uint64_t steps, double delta) {
  RETURN_IF_ERROR(CheckCost(q, sigma, steps));
  Spent spent;
  {
    absl::MutexLock lock(&mu_);
    ASSIGN_OR_RETURN(spent, Load(std::nullopt, dataset_id));
  }
  RdpAccountant accountant(spent.orders);
  accountant.set_rdp(spent.rdp);
  accountant.AddSteps(q, sigma, steps);
  return accountant.Epsilon(delta);
}

}  // namespace fl
