#include "privacy/ledger.h"

#include <sqlite3.h>

#include <cmath>
#include <limits>
#include <map>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/sqlite.h"
#include "common/status.h"
#include "privacy/rdp_accountant.h"

namespace fl {
namespace {

// 1: rounds only, named by the dataset id the caller gave (data_dir before dataset ids).
// 2: adds settings (the site's default dataset id), dataset_images (which dataset each image
//    belongs to) and dataset_aliases (version-1 names adopted by a bound dataset).
// 3: rounds gains `release`: a round trained again (after a restart, a lost update) is a second
//    release of the same data with fresh noise and sampling, and is counted again.
constexpr int kSchemaVersion = 3;
constexpr int kBusyTimeoutMs = 10000;

constexpr char kSchema[] = R"sql(
CREATE TABLE IF NOT EXISTS rounds (
  job_id TEXT NOT NULL,
  dataset_id TEXT NOT NULL,
  round INTEGER NOT NULL,
  release INTEGER NOT NULL,
  sample_rate REAL NOT NULL,
  noise_multiplier REAL NOT NULL,
  steps INTEGER NOT NULL,
  recorded_at_unix_us INTEGER NOT NULL,
  PRIMARY KEY (job_id, dataset_id, round, release)
);
CREATE INDEX IF NOT EXISTS rounds_by_dataset ON rounds (dataset_id);
CREATE TABLE IF NOT EXISTS settings (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS dataset_images (
  image_hash INTEGER PRIMARY KEY,
  dataset_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS dataset_aliases (
  alias TEXT PRIMARY KEY,
  dataset_id TEXT NOT NULL
);
)sql";

// Creates the schema, or checks that an existing file's schema is one this build reads.
absl::Status Configure(sqlite3* db) {
  int found = 0;
  {  // finalized before any table is dropped (a live statement would lock it)
    SqlStatement version(db, "PRAGMA user_version");
    RETURN_IF_ERROR(version.status());
    ASSIGN_OR_RETURN(bool row, version.Step());
    found = row ? sqlite3_column_int(version.get(), 0) : 0;
  }
  if (found > kSchemaVersion) {
    return absl::FailedPreconditionError(absl::StrCat(
        "privacy ledger schema version ", found, " is newer than this build's ", kSchemaVersion));
  }
  SqlTransaction txn(db);
  RETURN_IF_ERROR(txn.Begin());
  if (found >= 1 && found < 3) {  // each recorded round of a version 1 or 2 file: release 1
    RETURN_IF_ERROR(SqliteExec(db, R"sql(
ALTER TABLE rounds RENAME TO rounds_v2;
DROP INDEX IF EXISTS rounds_by_dataset;
)sql"));
    RETURN_IF_ERROR(SqliteExec(db, kSchema));
    RETURN_IF_ERROR(SqliteExec(db, R"sql(
INSERT INTO rounds (job_id, dataset_id, round, release, sample_rate, noise_multiplier, steps,
                    recorded_at_unix_us)
  SELECT job_id, dataset_id, round, 1, sample_rate, noise_multiplier, steps, recorded_at_unix_us
  FROM rounds_v2;
DROP TABLE rounds_v2;
)sql"));
  }
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
  ASSIGN_OR_RETURN(sqlite3 * db, OpenSqlite(path, "privacy ledger", kBusyTimeoutMs));
  if (absl::Status status = Configure(db); !status.ok()) {
    sqlite3_close(db);
    return Annotate(status, absl::StrCat("opening privacy ledger '", path, "'"));
  }
  return std::unique_ptr<PrivacyLedger>(new PrivacyLedger(db));
}

PrivacyLedger::~PrivacyLedger() { sqlite3_close(db_); }

absl::StatusOr<std::string> PrivacyLedger::DefaultDatasetId() {
  std::random_device random;
  const uint64_t bits = (uint64_t{random()} << 32) ^ random();
  absl::MutexLock lock(&mu_);
  SqlTransaction txn(db_);
  RETURN_IF_ERROR(txn.Begin());
  // The first caller's id wins, also against another process creating one at the same time.
  SqlStatement insert(db_,
                      "INSERT OR IGNORE INTO settings (key, value) "
                      "VALUES ('default_dataset_id', ?1)");
  insert.Bind(1, absl::StrFormat("site-data-%016x", bits));
  RETURN_IF_ERROR(insert.Run());
  SqlStatement read(db_, "SELECT value FROM settings WHERE key = 'default_dataset_id'");
  ASSIGN_OR_RETURN(bool row, read.Step());
  if (!row) return absl::InternalError("privacy ledger: default dataset id not stored");
  std::string id = read.Blob(0);
  RETURN_IF_ERROR(txn.Commit());
  return id;
}

absl::StatusOr<std::string> PrivacyLedger::BindDataset(const std::string& dataset_id,
                                                       const std::vector<uint64_t>& image_hashes) {
  if (dataset_id.empty()) return absl::InvalidArgumentError("dataset_id must not be empty");
  absl::MutexLock lock(&mu_);
  absl::StatusOr<std::string> id = BindLocked(dataset_id, image_hashes);
  if (!id.ok()) {
    return Annotate(id.status(),
                    absl::StrCat("binding dataset '", dataset_id, "' in the privacy ledger"));
  }
  return id;
}

absl::StatusOr<std::string> PrivacyLedger::BindLocked(const std::string& dataset_id,
                                                      const std::vector<uint64_t>& image_hashes) {
  SqlTransaction txn(db_);
  RETURN_IF_ERROR(txn.Begin());
  SqlStatement canonical(db_,
                         "SELECT COALESCE((SELECT dataset_id FROM dataset_aliases "
                         "WHERE alias = ?1), ?1)");
  canonical.Bind(1, dataset_id);
  RETURN_IF_ERROR(canonical.Step().status());
  const std::string id = canonical.Blob(0);
  // Which images are already bound, and to which dataset.
  std::map<std::string, int64_t> elsewhere;  // other dataset id -> shared images
  SqlStatement owner(db_, "SELECT dataset_id FROM dataset_images WHERE image_hash = ?1");
  SqlStatement insert(db_,
                      "INSERT OR IGNORE INTO dataset_images (image_hash, dataset_id) "
                      "VALUES (?1, ?2)");
  RETURN_IF_ERROR(owner.status());
  RETURN_IF_ERROR(insert.status());
  for (uint64_t hash : image_hashes) {
    sqlite3_reset(owner.get());
    owner.Bind(1, static_cast<int64_t>(hash));
    ASSIGN_OR_RETURN(bool bound, owner.Step());
    if (bound) {
      if (std::string other = owner.Blob(0); other != id) ++elsewhere[other];
      continue;
    }
    sqlite3_reset(insert.get());
    insert.Bind(1, static_cast<int64_t>(hash)).Bind(2, id);
    RETURN_IF_ERROR(insert.Run());
  }
  if (!elsewhere.empty()) {  // the rollback binds nothing
    std::vector<std::string> parts;
    for (const auto& [other, n] : elsewhere) {
      parts.push_back(absl::StrCat(n, " under dataset id '", other, "'"));
    }
    return absl::FailedPreconditionError(absl::StrCat(
        "of these ", image_hashes.size(), " images, ", absl::StrJoin(parts, " and "),
        " have already been trained on, and their privacy cost is recorded there; the same "
        "patients must not get a second budget: set dataset_id: \"",
        elsewhere.begin()->first, "\" in the client config"));
  }
  // Names of a version-1 ledger (its data_dir spellings) become aliases of this dataset.
  SqlStatement adopt(db_,
                     "INSERT OR IGNORE INTO dataset_aliases (alias, dataset_id) "
                     "SELECT DISTINCT dataset_id, ?1 FROM rounds WHERE dataset_id != ?1 "
                     "AND dataset_id NOT IN (SELECT dataset_id FROM dataset_images) "
                     "AND dataset_id NOT IN (SELECT alias FROM dataset_aliases)");
  adopt.Bind(1, id);
  RETURN_IF_ERROR(adopt.Run());
  RETURN_IF_ERROR(txn.Commit());
  return id;
}

absl::StatusOr<std::vector<PrivacyLedger::DatasetInfo>> PrivacyLedger::Datasets() {
  absl::MutexLock lock(&mu_);
  std::map<std::string, DatasetInfo> found;
  SqlStatement images(db_, "SELECT dataset_id, COUNT(*) FROM dataset_images GROUP BY dataset_id");
  while (true) {
    ASSIGN_OR_RETURN(bool row, images.Step());
    if (!row) break;
    DatasetInfo& info = found[images.Blob(0)];
    info.images = images.Int(1);
  }
  SqlStatement aliases(db_, "SELECT alias, dataset_id FROM dataset_aliases ORDER BY alias");
  while (true) {
    ASSIGN_OR_RETURN(bool row, aliases.Step());
    if (!row) break;
    found[aliases.Blob(1)].aliases.push_back(aliases.Blob(0));
  }
  std::vector<DatasetInfo> out;
  for (auto& [id, info] : found) {
    info.id = id;
    out.push_back(std::move(info));
  }
  return out;
}

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

absl::Status PrivacyLedger::RecordLocked(const std::string& job_id, const std::string& dataset_id,
                                         int64_t round, double q, double sigma, uint64_t steps) {
  SqlTransaction txn(db_);
  RETURN_IF_ERROR(txn.Begin());
  SqlStatement insert(db_,
                      "INSERT INTO rounds (job_id, dataset_id, round, release, sample_rate, "
                      "noise_multiplier, steps, recorded_at_unix_us) VALUES (?1, ?2, ?3, "
                      "(SELECT COALESCE(MAX(release), 0) + 1 FROM rounds WHERE job_id = ?1 AND "
                      "dataset_id = ?2 AND round = ?3), ?4, ?5, ?6, ?7)");
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
  // composed curve independent of insertion order. A name given as an alias stands for the
  // dataset that adopted it, and a dataset's rows include those of its aliases.
  SqlStatement rows(db_,
                    "WITH d(id) AS (SELECT COALESCE((SELECT dataset_id FROM dataset_aliases "
                    "WHERE alias = ?1), ?1)) "
                    "SELECT sample_rate, noise_multiplier, SUM(steps), COUNT(*) FROM rounds "
                    "WHERE (dataset_id = (SELECT id FROM d) OR dataset_id IN "
                    "(SELECT alias FROM dataset_aliases WHERE dataset_id = (SELECT id FROM d))) "
                    "AND (?2 IS NULL OR job_id = ?2) "
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
    accountant.AddSteps(sqlite3_column_double(rows.get(), 0), sqlite3_column_double(rows.get(), 1),
                        static_cast<uint64_t>(steps));
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
