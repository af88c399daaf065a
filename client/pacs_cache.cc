#include "client/pacs_cache.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <ctime>
#include <map>
#include <set>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "client/dicom.h"
#include "common/digest.h"
#include "common/env.h"
#include "common/file_util.h"
#include "common/sqlite.h"
#include "common/status.h"
#include "dcmtk/dcmdata/dcdeftag.h"
#include "dcmtk/dcmdata/dcfilefo.h"

namespace fl {
namespace {

constexpr char kSchema[] =
    "CREATE TABLE IF NOT EXISTS instances (sop_uid TEXT PRIMARY KEY, study_uid TEXT NOT NULL,"
    " series_uid TEXT NOT NULL, file TEXT NOT NULL, size INTEGER NOT NULL,"
    " sha256 TEXT NOT NULL, fetched_at INTEGER NOT NULL);"
    "CREATE INDEX IF NOT EXISTS instances_series ON instances (series_uid);"
    "CREATE TABLE IF NOT EXISTS rejected (sop_uid TEXT PRIMARY KEY, series_uid TEXT NOT NULL,"
    " reason TEXT NOT NULL, at INTEGER NOT NULL);"
    "CREATE INDEX IF NOT EXISTS rejected_series ON rejected (series_uid);";

std::string Join(const std::string& dir, const std::string& name) { return dir + "/" + name; }

std::string Value(DcmDataset* ds, const DcmTagKey& tag) {
  OFString value;
  if (ds->findAndGetOFString(tag, value).bad()) return "";
  return std::string(absl::StripAsciiWhitespace(value.c_str()));
}

// The decoder's reason without the "PATH: " it starts with.
std::string Reason(const std::string& path, const absl::Status& status) {
  return std::string(absl::StripPrefix(status.message(), path + ": "));
}

// Writes `instance` to `part` as a DICOM file in the transfer syntax it came in, then reads it
// back with DCMTK as training will: DATA_LOSS with the reason when it does not decode.
absl::Status WriteChecked(DcmDataset* instance, const std::string& uid, const std::string& part) {
  DcmFileFormat file(instance);  // a copy: the caller (DcmSCU) owns `instance`
  const OFCondition saved = file.saveFile(part.c_str(), EXS_Unknown);
  if (saved.bad()) {
    return absl::InternalError(absl::StrCat("writing ", part, ": ", saved.text()));
  }
  absl::StatusOr<DicomImage> image = DecodeDicom(part, 0);
  if (!image.ok()) return absl::DataLossError(Reason(part, image.status()));
  if (image->sop_instance_uid != uid) {
    return absl::DataLossError(
        absl::StrCat("read back with SOP Instance UID '", image->sop_instance_uid, "'"));
  }
  return absl::OkStatus();
}

int64_t Now() { return static_cast<int64_t>(std::time(nullptr)); }

}  // namespace

std::string PacsCache::InstancesDir(const std::string& dir) { return Join(dir, "instances"); }

std::string PacsCache::FileName(const std::string& sop_instance_uid) {
  std::string name = sop_instance_uid;
  for (char& c : name) {
    if (!(c >= '0' && c <= '9') && c != '.') c = '_';
  }
  return name + ".dcm";
}

PacsCache::PacsCache(std::string dir, sqlite3* db, int lock_fd)
    : dir_(std::move(dir)), db_(db), lock_fd_(lock_fd) {}

PacsCache::~PacsCache() {
  sqlite3_close(db_);
  ::close(lock_fd_);  // releases the flock
}

absl::StatusOr<std::unique_ptr<PacsCache>> PacsCache::Open(const std::string& dir,
                                                           CacheRepair* repair) {
  if (dir.empty()) return absl::InvalidArgumentError("source.pacs.cache_dir: required");
  RETURN_IF_ERROR(MakeDirs(InstancesDir(dir), 0700));
  RETURN_IF_ERROR(MakeDirs(Join(dir, "incoming"), 0700));
  const std::string lock = Join(dir, "lock");
  const int fd = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return ErrnoStatus("open", lock, errno);
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    ::close(fd);
    if (err == EWOULDBLOCK) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the PACS cache ", dir, " is being synced by another process (fl-client or flctl)"));
    }
    return ErrnoStatus("flock", lock, err);
  }
  absl::StatusOr<sqlite3*> db = OpenSqlite(Join(dir, "index.db"), "PACS cache index", 5000);
  if (!db.ok()) {
    ::close(fd);
    return db.status();
  }
  std::unique_ptr<PacsCache> cache(new PacsCache(dir, *db, fd));
  CacheRepair ignored;
  RETURN_IF_ERROR(cache->Reconcile(repair != nullptr ? repair : &ignored));
  return cache;
}

absl::Status PacsCache::Reconcile(CacheRepair* repair) {
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(SqliteExec(db_, kSchema));
  Env* env = Env::Default();
  const std::string incoming = Join(dir_, "incoming");
  ASSIGN_OR_RETURN(std::vector<std::string> partial, env->ListDir(incoming));
  for (const std::string& name : partial) {
    RETURN_IF_ERROR(env->RemoveFile(Join(incoming, name)));
    ++repair->partial_files;
  }
  std::map<std::string, int64_t> size_of;  // file -> size, as indexed
  SqlStatement rows(db_, "SELECT file, size FROM instances");
  RETURN_IF_ERROR(rows.status());
  while (true) {
    ASSIGN_OR_RETURN(bool row, rows.Step());
    if (!row) break;
    size_of[rows.Blob(0)] = rows.Int(1);
  }
  const std::string instances = InstancesDir(dir_);
  ASSIGN_OR_RETURN(std::vector<std::string> names, env->ListDir(instances));
  std::set<std::string> sound;
  for (const std::string& name : names) {
    auto it = size_of.find(name);
    absl::StatusOr<uint64_t> size = env->FileSize(Join(instances, name));
    if (it != size_of.end() && size.ok() && static_cast<int64_t>(*size) == it->second) {
      sound.insert(name);
      continue;
    }
    RETURN_IF_ERROR(env->RemoveFile(Join(instances, name)));
    ++(it == size_of.end() ? repair->unindexed_files : repair->stale_rows);
  }
  const std::set<std::string> present(names.begin(), names.end());
  for (const auto& [file, size] : size_of) {
    if (sound.count(file)) continue;
    SqlStatement drop(db_, "DELETE FROM instances WHERE file = ?");
    RETURN_IF_ERROR(drop.Bind(1, file).Run());
    if (!present.count(file)) ++repair->stale_rows;  // one of another size counted above
  }
  return absl::OkStatus();
}

absl::Status PacsCache::Put(DcmDataset* instance, int64_t* bytes) {
  const std::string uid = Value(instance, DCM_SOPInstanceUID);
  const std::string study = Value(instance, DCM_StudyInstanceUID);
  const std::string series = Value(instance, DCM_SeriesInstanceUID);
  if (uid.empty()) return absl::DataLossError("an object without SOP Instance UID");
  Env* env = Env::Default();
  const std::string name = FileName(uid);
  const std::string part = Join(Join(dir_, "incoming"), name + ".part");
  absl::Status checked = WriteChecked(instance, uid, part);
  absl::StatusOr<std::string> contents =
      checked.ok() ? ReadFileToString(part) : absl::StatusOr<std::string>(checked);
  env->RemoveFile(part).IgnoreError();  // best effort: Open empties incoming/ anyway
  if (absl::IsDataLoss(checked)) {
    RETURN_IF_ERROR(Reject(uid, series, std::string(checked.message())));
    return absl::DataLossError(absl::StrCat(uid, ": ", checked.message()));
  }
  RETURN_IF_ERROR(contents.status());
  RETURN_IF_ERROR(WriteFileAtomic(Join(InstancesDir(dir_), name), *contents, 0600));
  *bytes = static_cast<int64_t>(contents->size());
  return Index(uid, study, series, name, *bytes, Sha256Hex(*contents));
}

absl::Status PacsCache::Index(const std::string& uid, const std::string& study,
                              const std::string& series, const std::string& file, int64_t size,
                              const std::string& sha256) {
  absl::MutexLock lock(&mu_);
  SqlStatement put(db_,
                   "INSERT OR REPLACE INTO instances (sop_uid, study_uid, series_uid, file, size,"
                   " sha256, fetched_at) VALUES (?, ?, ?, ?, ?, ?, ?)");
  return put.Bind(1, uid)
      .Bind(2, study)
      .Bind(3, series)
      .Bind(4, file)
      .Bind(5, size)
      .Bind(6, sha256)
      .Bind(7, Now())
      .Run();
}

absl::Status PacsCache::Reject(const std::string& uid, const std::string& series,
                               const std::string& why) {
  absl::MutexLock lock(&mu_);
  SqlStatement put(db_,
                   "INSERT OR REPLACE INTO rejected (sop_uid, series_uid, reason, at)"
                   " VALUES (?, ?, ?, ?)");
  return put.Bind(1, uid).Bind(2, series).Bind(3, why).Bind(4, Now()).Run();
}

int PacsCache::CountWhere(const char* sql, const std::string& key) {
  absl::MutexLock lock(&mu_);
  SqlStatement count(db_, sql);
  if (!key.empty()) count.Bind(1, key);
  absl::StatusOr<bool> row = count.Step();
  return row.ok() && *row ? static_cast<int>(count.Int(0)) : 0;
}

bool PacsCache::Has(const std::string& uid) {
  return CountWhere("SELECT COUNT(*) FROM instances WHERE sop_uid = ?", uid) > 0;
}

bool PacsCache::WasRejected(const std::string& uid) {
  return CountWhere("SELECT COUNT(*) FROM rejected WHERE sop_uid = ?", uid) > 0;
}

int PacsCache::KnownInSeries(const std::string& series) {
  return CountWhere("SELECT COUNT(*) FROM instances WHERE series_uid = ?", series) +
         CountWhere("SELECT COUNT(*) FROM rejected WHERE series_uid = ?", series);
}

int PacsCache::Count() { return CountWhere("SELECT COUNT(*) FROM instances", ""); }

absl::Status PacsCache::ForgetRejected() {
  absl::MutexLock lock(&mu_);
  return SqliteExec(db_, "DELETE FROM rejected");
}

absl::StatusOr<int> PacsCache::Verify() {
  std::vector<std::pair<std::string, std::string>> files;  // file, sha256
  {
    absl::MutexLock lock(&mu_);
    SqlStatement rows(db_, "SELECT file, sha256 FROM instances");
    RETURN_IF_ERROR(rows.status());
    while (true) {
      ASSIGN_OR_RETURN(bool row, rows.Step());
      if (!row) break;
      files.emplace_back(rows.Blob(0), rows.Blob(1));
    }
  }
  int removed = 0;
  for (const auto& [file, sha256] : files) {
    const std::string path = Join(InstancesDir(dir_), file);
    absl::StatusOr<std::string> contents = ReadFileToString(path);
    if (contents.ok() && Sha256Hex(*contents) == sha256) continue;
    Env::Default()->RemoveFile(path).IgnoreError();  // may be gone already
    absl::MutexLock lock(&mu_);
    SqlStatement drop(db_, "DELETE FROM instances WHERE file = ?");
    RETURN_IF_ERROR(drop.Bind(1, file).Run());
    ++removed;
  }
  return removed;
}

}  // namespace fl
