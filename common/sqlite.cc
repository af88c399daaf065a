#include "common/sqlite.h"

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace fl {

absl::StatusOr<sqlite3*> OpenSqlite(const std::string& path, const std::string& what,
                                    int busy_timeout_ms) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                      nullptr) != SQLITE_OK) {
    absl::Status status = absl::UnavailableError(absl::StrCat(
        "cannot open ", what, " ", path, ": ", db ? sqlite3_errmsg(db) : "out of memory"));
    sqlite3_close(db);
    return status;
  }
  sqlite3_busy_timeout(db, busy_timeout_ms);
  absl::Status status = [&]() -> absl::Status {
    SqlStatement wal(db, "PRAGMA journal_mode=WAL");
    ASSIGN_OR_RETURN(bool row, wal.Step());
    const unsigned char* mode = row ? sqlite3_column_text(wal.get(), 0) : nullptr;
    if (mode == nullptr || std::string(reinterpret_cast<const char*>(mode)) != "wal") {
      return absl::FailedPreconditionError("the file system refuses WAL mode");
    }
    return SqliteExec(db, "PRAGMA synchronous=FULL");
  }();
  if (!status.ok()) {
    sqlite3_close(db);
    return Annotate(status, absl::StrCat("opening ", what, " ", path));
  }
  return db;
}

namespace {

// The status of a failed call that returned `rc`: a full disk is RESOURCE_EXHAUSTED (callers
// wait for space or tell their peer to send again), a broken constraint ALREADY_EXISTS; the
// other failures of the disk take the codes ErrnoStatus (common/env.h) gives their errno.
absl::Status SqliteError(int rc, const char* message) {
  const std::string text = absl::StrCat("sqlite: ", message);
  switch (rc & 0xFF) {
    case SQLITE_CONSTRAINT:
      return absl::AlreadyExistsError(message);
    case SQLITE_FULL:
      return absl::ResourceExhaustedError("sqlite: disk is full");
    case SQLITE_IOERR:
      return absl::UnavailableError(text);
    case SQLITE_READONLY:
      return absl::FailedPreconditionError(text);
    case SQLITE_PERM:
      return absl::PermissionDeniedError(text);
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      return absl::DataLossError(text);
    default:
      return absl::InternalError(text);
  }
}

}  // namespace

absl::Status SqliteExec(sqlite3* db, const std::string& sql) {
  char* error = nullptr;
  const int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &error);
  if (rc != SQLITE_OK) {
    absl::Status status = SqliteError(rc, error != nullptr ? error : sqlite3_errmsg(db));
    sqlite3_free(error);
    return status;
  }
  return absl::OkStatus();
}

SqlStatement::SqlStatement(sqlite3* db, const char* sql) : db_(db) {
  if (sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr) != SQLITE_OK) {
    status_ =
        absl::InternalError(absl::StrCat("sqlite: preparing '", sql, "': ", sqlite3_errmsg(db)));
    stmt_ = nullptr;
  }
}

SqlStatement::~SqlStatement() { sqlite3_finalize(stmt_); }

SqlStatement& SqlStatement::Bind(int i, const std::string& text) {
  sqlite3_bind_text(stmt_, i, text.data(), static_cast<int>(text.size()), SQLITE_TRANSIENT);
  return *this;
}

SqlStatement& SqlStatement::BindBlob(int i, const std::string& bytes) {
  sqlite3_bind_blob(stmt_, i, bytes.data(), static_cast<int>(bytes.size()), SQLITE_TRANSIENT);
  return *this;
}

SqlStatement& SqlStatement::Bind(int i, int64_t value) {
  sqlite3_bind_int64(stmt_, i, value);
  return *this;
}

SqlStatement& SqlStatement::Bind(int i, double value) {
  sqlite3_bind_double(stmt_, i, value);
  return *this;
}

absl::StatusOr<bool> SqlStatement::Step() {
  if (!status_.ok()) return status_;
  const int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  return SqliteError(rc, sqlite3_errmsg(db_));
}

std::string SqlStatement::Blob(int col) {
  const void* p = sqlite3_column_blob(stmt_, col);
  return p ? std::string(static_cast<const char*>(p), sqlite3_column_bytes(stmt_, col)) : "";
}

SqlTransaction::~SqlTransaction() {
  // The first error is what the caller sees; a failed rollback leaves SQLite to undo the
  // transaction when the connection closes.
  if (open_) SqliteExec(db_, "ROLLBACK").IgnoreError();
}

absl::Status SqlTransaction::Begin() {
  RETURN_IF_ERROR(SqliteExec(db_, "BEGIN IMMEDIATE"));
  open_ = true;
  return absl::OkStatus();
}

absl::Status SqlTransaction::Commit() {
  RETURN_IF_ERROR(SqliteExec(db_, "COMMIT"));
  open_ = false;
  return absl::OkStatus();
}

}  // namespace fl
