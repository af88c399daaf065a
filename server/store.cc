#include "server/store.h"

#include <sqlite3.h>

#include <ctime>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace fl {
namespace {

constexpr char kSchema[] = R"sql(
CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, status BLOB NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (job_id TEXT NOT NULL, round INTEGER NOT NULL,
  path TEXT NOT NULL, crc32c INTEGER NOT NULL, PRIMARY KEY (job_id, round));
CREATE TABLE IF NOT EXISTS sites (name TEXT PRIMARY KEY, info BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS receipts (job_id TEXT NOT NULL, round INTEGER NOT NULL,
  site TEXT NOT NULL, samples INTEGER NOT NULL, bytes INTEGER NOT NULL, time REAL NOT NULL,
  PRIMARY KEY (job_id, round, site));
CREATE TABLE IF NOT EXISTS audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL,
  identity TEXT NOT NULL, action TEXT NOT NULL, detail TEXT NOT NULL);
)sql";

double Now() { return static_cast<double>(std::time(nullptr)); }

// A prepared statement that finalizes itself.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) : db_(db) {
    if (sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr) != SQLITE_OK) stmt_ = nullptr;
  }
  ~Stmt() { sqlite3_finalize(stmt_); }
  absl::Status ok() const {
    return stmt_ ? absl::OkStatus()
                 : absl::InternalError(absl::StrCat("sqlite prepare: ", sqlite3_errmsg(db_)));
  }
  Stmt& Bind(int i, const std::string& v) {
    sqlite3_bind_text(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& BindBlob(int i, const std::string& v) {
    sqlite3_bind_blob(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& Bind(int i, int64_t v) {
    sqlite3_bind_int64(stmt_, i, v);
    return *this;
  }
  Stmt& Bind(int i, double v) {
    sqlite3_bind_double(stmt_, i, v);
    return *this;
  }
  // SQLITE_ROW, SQLITE_DONE or an error code.
  int Step() { return sqlite3_step(stmt_); }
  absl::Status Run() {
    int rc = Step();
    if (rc == SQLITE_DONE || rc == SQLITE_ROW) return absl::OkStatus();
    if (rc == SQLITE_CONSTRAINT) return absl::AlreadyExistsError(sqlite3_errmsg(db_));
    if (rc == SQLITE_FULL) return absl::ResourceExhaustedError("state database: disk is full");
    return absl::InternalError(absl::StrCat("sqlite: ", sqlite3_errmsg(db_)));
  }
  std::string Text(int col) {
    const void* p = sqlite3_column_blob(stmt_, col);
    return p ? std::string(static_cast<const char*>(p), sqlite3_column_bytes(stmt_, col)) : "";
  }
  int64_t Int(int col) { return sqlite3_column_int64(stmt_, col); }

 private:
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
};

template <typename T>
absl::StatusOr<std::vector<T>> ReadProtos(sqlite3* db, const char* sql) {
  Stmt stmt(db, sql);
  RETURN_IF_ERROR(stmt.ok());
  std::vector<T> out;
  while (stmt.Step() == SQLITE_ROW) {
    T message;
    if (!message.ParseFromString(stmt.Text(0))) {
      return absl::DataLossError("state database holds an unreadable record");
    }
    out.push_back(std::move(message));
  }
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Store>> Store::Open(const std::string& path) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                                               SQLITE_OPEN_FULLMUTEX,
                      nullptr) != SQLITE_OK) {
    std::string why = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return absl::UnavailableError(absl::StrCat("cannot open state database ", path, ": ", why));
  }
  std::unique_ptr<Store> store(new Store(db));
  sqlite3_busy_timeout(db, 5000);
  RETURN_IF_ERROR(Annotate(store->Exec("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"), path));
  RETURN_IF_ERROR(Annotate(store->Exec(kSchema), path));
  return store;
}

Store::~Store() { sqlite3_close(db_); }

absl::Status Store::Exec(const std::string& sql) {
  char* error = nullptr;
  if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &error) != SQLITE_OK) {
    std::string why = error ? error : "unknown error";
    sqlite3_free(error);
    return absl::InternalError(absl::StrCat("sqlite: ", why));
  }
  return absl::OkStatus();
}

absl::Status Store::PutJob(const JobStatus& job) {
  absl::MutexLock lock(&mu_);
  Stmt stmt(db_, "INSERT OR REPLACE INTO jobs (id, status, updated) VALUES (?, ?, ?)");
  RETURN_IF_ERROR(stmt.ok());
  return stmt.Bind(1, job.job_id()).BindBlob(2, job.SerializeAsString()).Bind(3, Now()).Run();
}

absl::StatusOr<std::vector<JobStatus>> Store::Jobs() {
  absl::MutexLock lock(&mu_);
  return ReadProtos<JobStatus>(db_, "SELECT status FROM jobs ORDER BY rowid");
}

absl::Status Store::CommitRound(const JobStatus& job, const Checkpoint& checkpoint) {
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE"));
  Stmt put(db_, "INSERT OR REPLACE INTO jobs (id, status, updated) VALUES (?, ?, ?)");
  Stmt ckpt(db_, "INSERT OR REPLACE INTO checkpoints (job_id, round, path, crc32c) "
                 "VALUES (?, ?, ?, ?)");
  absl::Status status = put.ok();
  if (status.ok()) status = ckpt.ok();
  if (status.ok()) {
    status = put.Bind(1, job.job_id()).BindBlob(2, job.SerializeAsString()).Bind(3, Now()).Run();
  }
  if (status.ok()) {
    status = ckpt.Bind(1, job.job_id())
                 .Bind(2, static_cast<int64_t>(checkpoint.round))
                 .Bind(3, checkpoint.path)
                 .Bind(4, static_cast<int64_t>(checkpoint.crc32c))
                 .Run();
  }
  if (!status.ok()) {
    Exec("ROLLBACK").IgnoreError();  // the failure being reported is the one that matters
    return status;
  }
  return Exec("COMMIT");
}

absl::StatusOr<Checkpoint> Store::LatestCheckpoint(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  Stmt stmt(db_, "SELECT path, crc32c, round FROM checkpoints WHERE job_id = ? "
                 "ORDER BY round DESC LIMIT 1");
  RETURN_IF_ERROR(stmt.ok());
  stmt.Bind(1, job_id);
  if (stmt.Step() != SQLITE_ROW) {
    return absl::NotFoundError(absl::StrCat("no checkpoint for job ", job_id));
  }
  return Checkpoint{stmt.Text(0), static_cast<uint32_t>(stmt.Int(1)),
                    static_cast<uint32_t>(stmt.Int(2))};
}

absl::Status Store::PutSite(const SiteInfo& site) {
  absl::MutexLock lock(&mu_);
  Stmt stmt(db_, "INSERT OR REPLACE INTO sites (name, info) VALUES (?, ?)");
  RETURN_IF_ERROR(stmt.ok());
  return stmt.Bind(1, site.name()).BindBlob(2, site.SerializeAsString()).Run();
}

absl::StatusOr<std::vector<SiteInfo>> Store::Sites() {
  absl::MutexLock lock(&mu_);
  return ReadProtos<SiteInfo>(db_, "SELECT info FROM sites ORDER BY name");
}

absl::Status Store::AddReceipt(const std::string& job_id, uint32_t round, const std::string& site,
                               uint64_t samples, uint64_t bytes) {
  absl::MutexLock lock(&mu_);
  Stmt stmt(db_, "INSERT INTO receipts (job_id, round, site, samples, bytes, time) "
                 "VALUES (?, ?, ?, ?, ?, ?)");
  RETURN_IF_ERROR(stmt.ok());
  return stmt.Bind(1, job_id)
      .Bind(2, static_cast<int64_t>(round))
      .Bind(3, site)
      .Bind(4, static_cast<int64_t>(samples))
      .Bind(5, static_cast<int64_t>(bytes))
      .Bind(6, Now())
      .Run();
}

absl::Status Store::Audit(const std::string& identity, const std::string& action,
                          const std::string& detail) {
  absl::MutexLock lock(&mu_);
  Stmt stmt(db_, "INSERT INTO audit (time, identity, action, detail) VALUES (?, ?, ?, ?)");
  RETURN_IF_ERROR(stmt.ok());
  return stmt.Bind(1, Now()).Bind(2, identity).Bind(3, action).Bind(4, detail).Run();
}

absl::StatusOr<std::vector<std::string>> Store::AuditLog(int limit) {
  absl::MutexLock lock(&mu_);
  Stmt stmt(db_, "SELECT time, identity, action, detail FROM (SELECT * FROM audit ORDER BY seq "
                 "DESC LIMIT ?) ORDER BY seq");
  RETURN_IF_ERROR(stmt.ok());
  stmt.Bind(1, static_cast<int64_t>(limit));
  std::vector<std::string> out;
  while (stmt.Step() == SQLITE_ROW) {
    out.push_back(absl::StrCat(stmt.Int(0), " ", stmt.Text(1), " ", stmt.Text(2), " ",
                               stmt.Text(3)));
  }
  return out;
}

}  // namespace fl
