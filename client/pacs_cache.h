// The pacs source's local cache (client/pacs.h): what C-GET fetched, so that rounds read local
// files and never wait on the PACS.
//
// Layout of the cache folder:
//   instances/UID.dcm  one file per instance, named by its SOP Instance UID (characters other
//                      than digits and '.' become '_'); only checked, complete files
//   incoming/          partial files while they are written and checked; emptied at Open
//   index.db           SQLite: each cached instance (study, series, file, size, SHA-256, when)
//                      and each object refused as corrupt (with the reason)
//   lock               held (flock) by the one sync that may write the cache at a time
// A file enters instances/ only by rename after it was written, fsynced and read back with
// DCMTK; its index row follows. Open reconciles the two (a crash between them): files the index
// does not list and rows whose file is gone or has another size are removed, so the next sync
// fetches them again.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "dcmtk/config/osconfig.h"
#include "dcmtk/dcmdata/dcdatset.h"

namespace fl {

// What Open found out of step and removed.
struct CacheRepair {
  int partial_files = 0;    // left in incoming/ by an interrupted sync
  int unindexed_files = 0;  // in instances/ without an index row
  int stale_rows = 0;       // index rows whose file is missing or changed size
};

class PacsCache {
 public:
  // instances/ under a cache folder: what the source lists.
  static std::string InstancesDir(const std::string& dir);
  // The file an instance is cached in.
  static std::string FileName(const std::string& sop_instance_uid);

  // Opens (creating) the cache at `dir` for writing and reconciles it (`repair`, if given,
  // receives what was removed). FAILED_PRECONDITION when another sync holds it.
  static absl::StatusOr<std::unique_ptr<PacsCache>> Open(const std::string& dir,
                                                         CacheRepair* repair = nullptr);
  ~PacsCache();

  // Checks and stores one received instance (see the layout above); `*bytes` gets its size.
  // A corrupt object (no SOP Instance UID, unreadable once written, pixel data that does not
  // decode) is DATA_LOSS with the reason: nothing of it stays in the cache, and it is
  // remembered as rejected. Other errors (disk full) are the file system's. Thread-safe.
  absl::Status Put(DcmDataset* instance, int64_t* bytes);

  // Whether the instance is cached, or was rejected as corrupt.
  bool Has(const std::string& sop_instance_uid);
  bool WasRejected(const std::string& sop_instance_uid);
  // Instances of the series cached plus those rejected.
  int KnownInSeries(const std::string& series_instance_uid);
  // Instances cached in all.
  int Count();
  // Forgets the rejected objects, so that the next sync asks for them again.
  absl::Status ForgetRejected();
  // Reads every cached file again and compares its SHA-256 with the index; a file that differs
  // is removed with its row (fetched again by the next sync). Returns how many were removed.
  absl::StatusOr<int> Verify();

 private:
  PacsCache(std::string dir, sqlite3* db, int lock_fd);
  absl::Status Reconcile(CacheRepair* repair);
  absl::Status Reject(const std::string& uid, const std::string& series, const std::string& why);
  absl::Status Index(const std::string& uid, const std::string& study, const std::string& series,
                     const std::string& file, int64_t size, const std::string& sha256);
  int CountWhere(const char* sql, const std::string& key);

  const std::string dir_;
  absl::Mutex mu_;
  sqlite3* const db_ ABSL_GUARDED_BY(mu_);
  const int lock_fd_;
};

}  // namespace fl
