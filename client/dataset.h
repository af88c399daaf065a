// A site's local dataset: the DICOM files of a folder joined with a CSV of labels, split into
// train and test by patient.
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace fl {

struct Sample {
  std::string path;
  std::string sop_instance_uid;
  // The image's stable name in its source where it has no SOP Instance UID (a public dataset's
  // JPEG or PNG): the source kind and the dataset's own image id, e.g. "chexpert:CheXpert-v1.0/
  // train/patient00001/study1/view1_frontal.jpg". What ImageHashes hashes then.
  std::string image_id;
  std::string patient_id;
  std::string sex;  // "M", "F" or ""
  int age_years = -1;
  // One value per Dataset::label_names: 1, 0, or NaN when this sample has no value for it.
  std::vector<float> labels;
  // One value per Dataset::field_names (clinical fields beside the image), NaN when missing.
  std::vector<float> fields;
};

// Why a source skipped a file or CSV row, in few words: the `reason` label of
// fl_client_images_skipped (bounded; the full reason is logged).
enum class SkipKind {
  kUnreadable,   // the file is there but is not an image this build reads (corrupt, truncated,
                 // not DICOM, an unsupported transfer syntax or format)
  kMissingFile,  // listed in a labels CSV, not on disk
  kDuplicate,    // the same image twice (SOP Instance UID, path, id)
  kBadRow,       // a CSV row that cannot be used (a label value or field it cannot read)
};
inline constexpr SkipKind kSkipKinds[] = {SkipKind::kUnreadable, SkipKind::kMissingFile,
                                          SkipKind::kDuplicate, SkipKind::kBadRow};
// "unreadable", "missing_file", "duplicate", "bad_row".
const char* SkipKindName(SkipKind kind);

// A file or CSV row a source could not use, and why.
struct SkippedItem {
  std::string what;  // the file's path, or the CSV and line
  std::string reason;
  SkipKind kind = SkipKind::kUnreadable;
};

struct Dataset {
  std::vector<std::string> label_names;  // the CSV's label columns
  std::vector<Sample> train;
  std::vector<Sample> test;
  int skipped_files = 0;     // files that could not be read (logged with the reason)
  int unlabelled_files = 0;  // decodable files without a CSV row
  int filtered = 0;          // images a source's filter left out (e.g. lateral views)
  // Clinical fields the samples carry (e.g. "age_years", "sex_male"); empty for a DICOM folder.
  std::vector<std::string> field_names;
  // Every skipped file with its reason (skipped_files of them), in listing order.
  std::vector<SkippedItem> skips;
};

// Labels CSV: a header row "key,<label>,<label>..." where key is a SOP Instance UID or a path
// relative to the data folder; values 1/0, or empty for unknown. Also used by `flctl data check`.
struct LabelTable {
  std::vector<std::string> label_names;
  // key -> values (one per label; NaN for unknown)
  std::vector<std::pair<std::string, std::vector<float>>> rows;
};
// Values: "1"/"1.0"/"true" -> 1; "0"/"0.0"/"false" -> 0; "", "-1", "-1.0", "nan", "na" -> unknown
// (NaN; CheXpert's -1 "uncertain" is treated as unknown). Whitespace around fields is trimmed,
// fields may be double-quoted, blank lines are skipped. Errors name the line: wrong field count,
// a value not in the list above, a duplicate key, a duplicate or empty column name.
absl::StatusOr<LabelTable> ReadLabelsCsv(const std::string& path);

// Finds a file's labels the way LoadDataset joins: by SOP Instance UID first, then by the path
// relative to the data folder ('/'-separated).
class LabelIndex {
 public:
  explicit LabelIndex(const LabelTable& table);
  // The values for the file, or nullptr when the table has no row for it.
  const std::vector<float>* Find(const std::string& sop_instance_uid,
                                 const std::string& relative_path) const;

 private:
  const LabelTable& table_;
  std::unordered_map<std::string, size_t> row_of_key_;
};

// Every regular file under `dir` (recursively), sorted, except `exclude` (e.g. the labels CSV
// when it lies inside the data folder). NotFound when `dir` is not a directory.
absl::StatusOr<std::vector<std::string>> ListDataFiles(const std::string& dir,
                                                       const std::string& exclude);

// Scans `dir` recursively, reads each DICOM header, joins with the labels CSV by SOP Instance UID
// or relative path, and splits by patient (deterministic hash of patient id; test_fraction of the
// patients go to test). Unreadable files are skipped and counted, never fatal.
// Details: the split hashes the patient id (64-bit FNV-1a + fmix64) into [0, 1) and sends it to
// test when below test_fraction (a file without PatientID is its own patient, keyed by its SOP
// Instance UID). With a labels CSV, files without a row are counted in unlabelled_files and left
// out of both splits; with labels_csv empty every decodable file is kept with no labels. A second
// file with an already seen SOP Instance UID is skipped. Each skipped file is logged to stderr
// with its reason. Errors only for a missing folder, an unreadable CSV or a bad test_fraction.
// `progress`, when set, hears after each file how many of the folder's files were looked at.
using ScanProgress = std::function<void(size_t done, size_t total)>;
absl::StatusOr<Dataset> LoadDataset(const std::string& dir, const std::string& labels_csv,
                                    double test_fraction,
                                    const ScanProgress& progress = ScanProgress());

// 64-bit FNV-1a of `text`, mixed by MurmurHash3's fmix64 finalizer (FNV alone barely moves the
// high bits for ids that differ only at the end, like "P000017" and "P000018"). Stable across
// platforms and releases: the split and the privacy ledger's image bindings depend on it.
uint64_t StableHash64(const std::string& text);

// One hash per image (of its SOP Instance UID, which names the image wherever its file lies;
// of Sample::image_id for an image without one):
// what the privacy ledger binds to the dataset's id (PrivacyLedger::BindDataset), so the same
// images cannot be trained on under a second id. Re-identified copies (new UIDs) are not caught.
std::vector<uint64_t> ImageHashes(const Dataset& data);

}  // namespace fl
