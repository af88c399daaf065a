#include "server/store.h"

#include <ctime>

#include "absl/strings/str_cat.h"
#include "common/sqlite.h"
#include "common/status.h"

namespace fl {
namespace {

constexpr char kSchema[] = R"sql(
CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, status BLOB NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (job_id TEXT NOT NULL, round INTEGER NOT NULL,
  path TEXT NOT NULL, crc32c INTEGER NOT NULL, PRIMARY KEY (job_id, round));
CREATE TABLE IF NOT EXISTS sites (name TEXT PRIMARY KEY, info BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS receipts (job_id TEXT NOT NULL, round INTEGER NOT NULL,
  attempt INTEGER NOT NULL, site TEXT NOT NULL, header BLOB NOT NULL, scale REAL NOT NULL,
  bytes INTEGER NOT NULL, spool TEXT NOT NULL, time REAL NOT NULL,
  PRIMARY KEY (job_id, round, attempt, site));
CREATE TABLE IF NOT EXISTS audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL,
  identity TEXT NOT NULL, action TEXT NOT NULL, detail TEXT NOT NULL);
)sql";

double Now() { return static_cast<double>(std::time(nullptr)); }

template <typename T>
absl::StatusOr<std::vector<T>> ReadProtos(sqlite3* db, const char* sql) {
  SqlStatement stmt(db, sql);
  std::vector<T> out;
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    T message;
    if (!message.ParseFromString(stmt.Blob(0))) {
      return absl::DataLossError("state database holds an unreadable record");
    }
    out.push_back(std::move(message));
  }
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Store>> Store::Open(const std::string& path) {
  ASSIGN_OR_RETURN(sqlite3 * db, OpenSqlite(path, "state database", 5000));
  std::unique_ptr<Store> store(new Store(db));
  RETURN_IF_ERROR(Annotate(SqliteExec(db, kSchema), path));
  return store;
}

Store::~Store() { sqlite3_close(db_); }

absl::Status Store::PutJob(const JobStatus& job) {
  absl::MutexLock lock(&mu_);
  SqlStatement stmt(db_, "INSERT OR REPLACE INTO jobs (id, status, updated) VALUES (?, ?, ?)");
  return stmt.Bind(1, job.job_id()).BindBlob(2, job.SerializeAsString()).Bind(3, Now()).Run();
}

absl::Status Store::Check() {
  absl::MutexLock lock(&mu_);
  for (const char* sql : {"SELECT 1 FROM jobs LIMIT 1", "SELECT 1 FROM sites LIMIT 1",
                          "SELECT 1 FROM receipts LIMIT 1"}) {
    SqlStatement stmt(db_, sql);
    if (absl::Status s = stmt.Step().status(); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("state.db: ", s.message()));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<JobStatus>> Store::Jobs() {
  absl::MutexLock lock(&mu_);
  return ReadProtos<JobStatus>(db_, "SELECT status FROM jobs ORDER BY rowid");
}

absl::Status Store::CommitRound(const JobStatus& job, const Checkpoint& checkpoint) {
  absl::MutexLock lock(&mu_);
  SqlTransaction txn(db_);
  RETURN_IF_ERROR(txn.Begin());
  SqlStatement put(db_, "INSERT OR REPLACE INTO jobs (id, status, updated) VALUES (?, ?, ?)");
  RETURN_IF_ERROR(
      put.Bind(1, job.job_id()).BindBlob(2, job.SerializeAsString()).Bind(3, Now()).Run());
  SqlStatement ckpt(db_,
                    "INSERT OR REPLACE INTO checkpoints (job_id, round, path, crc32c) "
                    "VALUES (?, ?, ?, ?)");
  RETURN_IF_ERROR(ckpt.Bind(1, job.job_id())
                      .Bind(2, static_cast<int64_t>(checkpoint.round))
                      .Bind(3, checkpoint.path)
                      .Bind(4, static_cast<int64_t>(checkpoint.crc32c))
                      .Run());
  return txn.Commit();
}

absl::StatusOr<Checkpoint> Store::LatestCheckpoint(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  SqlStatement stmt(db_,
                    "SELECT path, crc32c, round FROM checkpoints WHERE job_id = ? "
                    "ORDER BY round DESC LIMIT 1");
  ASSIGN_OR_RETURN(bool row, stmt.Bind(1, job_id).Step());
  if (!row) return absl::NotFoundError(absl::StrCat("no checkpoint for job ", job_id));
  return Checkpoint{stmt.Blob(0), static_cast<uint32_t>(stmt.Int(1)),
                    static_cast<uint32_t>(stmt.Int(2))};
}

absl::Status Store::PutSite(const SiteInfo& site) {
  absl::MutexLock lock(&mu_);
  SqlStatement stmt(db_, "INSERT OR REPLACE INTO sites (name, info) VALUES (?, ?)");
  return stmt.Bind(1, site.name()).BindBlob(2, site.SerializeAsString()).Run();
}

absl::StatusOr<std::vector<SiteInfo>> Store::Sites() {
  absl::MutexLock lock(&mu_);
  return ReadProtos<SiteInfo>(db_, "SELECT info FROM sites ORDER BY name");
}

absl::Status Store::AddReceipt(const Receipt& r) {
  absl::MutexLock lock(&mu_);
  SqlStatement stmt(db_,
                    "INSERT INTO receipts (job_id, round, attempt, site, header, scale, "
                    "bytes, spool, time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)");
  return stmt.Bind(1, r.job_id)
      .Bind(2, static_cast<int64_t>(r.round))
      .Bind(3, static_cast<int64_t>(r.attempt))
      .Bind(4, r.site)
      .BindBlob(5, r.header.SerializeAsString())
      .Bind(6, r.scale)
      .Bind(7, static_cast<int64_t>(r.bytes))
      .Bind(8, r.spool)
      .Bind(9, Now())
      .Run();
}

absl::StatusOr<std::vector<Receipt>> Store::Receipts(const std::string& job_id, uint32_t round) {
  absl::MutexLock lock(&mu_);
  SqlStatement stmt(db_,
                    "SELECT attempt, site, header, scale, bytes, spool FROM receipts "
                    "WHERE job_id = ? AND round = ? ORDER BY attempt, site");
  stmt.Bind(1, job_id).Bind(2, static_cast<int64_t>(round));
  std::vector<Receipt> out;
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    Receipt r{job_id, round, static_cast<uint32_t>(stmt.Int(0)), stmt.Blob(1)};
    if (!r.header.ParseFromString(stmt.Blob(2))) {
      return absl::DataLossError("state database holds an unreadable receipt");
    }
    r.scale = stmt.Double(3);
    r.bytes = static_cast<uint64_t>(stmt.Int(4));
    r.spool = stmt.Blob(5);
    out.push_back(std::move(r));
  }
  return out;
}

absl::Status Store::Audit(const std::string& identity, const std::string& action,
                          const std::string& detail) {
  absl::MutexLock lock(&mu_);
  SqlStatement stmt(db_, "INSERT INTO audit (time, identity, action, detail) VALUES (?, ?, ?, ?)");
  return stmt.Bind(1, Now()).Bind(2, identity).Bind(3, action).Bind(4, detail).Run();
}

absl::StatusOr<std::vector<std::string>> Store::AuditLog(int limit) {
  absl::MutexLock lock(&mu_);
  SqlStatement stmt(db_,
                    "SELECT time, identity, action, detail FROM (SELECT * FROM audit ORDER BY seq "
                    "DESC LIMIT ?) ORDER BY seq");
  stmt.Bind(1, static_cast<int64_t>(limit));
  std::vector<std::string> out;
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    out.push_back(
        absl::StrCat(stmt.Int(0), " ", stmt.Blob(1), " ", stmt.Blob(2), " ", stmt.Blob(3)));
  }
  return out;
}

}  // namespace fl
