// The one thin SQLite layer of the project (the coordinator's state, the client's privacy
// ledger): durable files in WAL mode with synchronous=FULL, prepared statements that finalize
// themselves, and transactions that roll back unless committed. Errors name the database.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fl {

// Opens or creates `path` (WAL, synchronous=FULL, `busy_timeout_ms`); `what` names the database
// in errors, e.g. "state database". The caller owns the handle (sqlite3_close).
absl::StatusOr<sqlite3*> OpenSqlite(const std::string& path, const std::string& what,
                                    int busy_timeout_ms);

// Runs one or more statements without results.
absl::Status SqliteExec(sqlite3* db, const std::string& sql);

// A prepared statement, finalized on scope exit. Binds chain: stmt.Bind(1, a).Bind(2, b).
class SqlStatement {
 public:
  SqlStatement(sqlite3* db, const char* sql);
  ~SqlStatement();
  SqlStatement(const SqlStatement&) = delete;
  SqlStatement& operator=(const SqlStatement&) = delete;

  // Not OK when preparing failed; every other call is then a no-op.
  const absl::Status& status() const { return status_; }
  sqlite3_stmt* get() { return stmt_; }

  SqlStatement& Bind(int i, const std::string& text);
  SqlStatement& BindBlob(int i, const std::string& bytes);
  SqlStatement& Bind(int i, int64_t value);
  SqlStatement& Bind(int i, double value);

  // True with a row, false when done. A constraint violation is ALREADY_EXISTS, a full disk
  // RESOURCE_EXHAUSTED, anything else INTERNAL.
  absl::StatusOr<bool> Step();
  // Step() for statements whose rows do not matter.
  absl::Status Run() { return Step().status(); }

  std::string Blob(int col);  // text or blob column as bytes
  int64_t Int(int col) { return sqlite3_column_int64(stmt_, col); }
  double Double(int col) { return sqlite3_column_double(stmt_, col); }

 private:
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
  absl::Status status_;
};

// An IMMEDIATE transaction (takes the write lock up front), rolled back unless committed.
class SqlTransaction {
 public:
  explicit SqlTransaction(sqlite3* db) : db_(db) {}
  ~SqlTransaction();
  absl::Status Begin();
  absl::Status Commit();

 private:
  sqlite3* db_;
  bool open_ = false;
};

}  // namespace fl
