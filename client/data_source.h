// A site's data, behind one interface: a source lists its samples (patient id for the split,
// labels with unknown kept as such, clinical fields) and loads a sample's pixels. One
// implementation per source kind (fl.DataSource in proto/fl/config.proto): a folder of DICOM
// files with a labels CSV, the public chest-radiograph datasets as released (CheXpert,
// MIMIC-CXR-JPG, ChestX-ray14, VinDr-CXR), and a PACS over DIMSE (client/pacs.h). Torch-free:
// flctl links it too.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/dataset.h"
#include "fl/config.pb.h"

namespace fl {

// The shape pixels are loaded at: height x width for an image, depth x height x width for a
// volume (depth 0: an image). Row-major, depth slowest.
struct PixelShape {
  int depth = 0;
  int height = 0;
  int width = 0;
  static PixelShape Square(int side) { return PixelShape{0, side, side}; }
  int64_t Elements() const { return static_cast<int64_t>(depth > 0 ? depth : 1) * height * width; }
};

// The privacy ledger names a source's data by ClientConfig.dataset_id (or the site's default
// id) and binds that id to the images the source lists, by their SOP Instance UID or, for files
// without one, by Sample::image_id, which a source takes from the dataset's own ids (never from
// where its files lie): moving or remounting a dataset keeps its budget (ImageHashes).
class DataSource {
 public:
  virtual ~DataSource() = default;

  // The source kind, as in the config ("dicom_folder", "chexpert", ...).
  virtual std::string Kind() const = 0;

  // Lists the samples and splits them by patient (deterministic hash of Sample::patient_id;
  // test_fraction of the patients go to test, as LoadDataset does). Files that cannot be used
  // are skipped and counted (Dataset::skipped_files), each logged with its reason and kept in
  // Dataset::skips; samples without labels in Dataset::unlabelled_files. Errors only for what
  // makes the whole source unusable: a missing folder or CSV, a CSV without its columns.
  virtual absl::StatusOr<Dataset> List(double test_fraction) const = 0;

  // The sample's pixels at `shape`, in [0, 1] (area-averaged resize; colour turned to gray).
  // Thread-safe. A file that cannot be decoded gives an error that names it and says why.
  virtual absl::StatusOr<std::vector<float>> Load(const Sample& sample,
                                                  const PixelShape& shape) const = 0;
};

// The source `config` names (renames applied to what List returns). The options are checked
// here: a missing root or an unknown kind is INVALID_ARGUMENT naming the field.
// `scan`, when set, hears how a DICOM folder's listing progresses (LoadDataset).
absl::StatusOr<std::unique_ptr<DataSource>> OpenDataSource(const DataSourceConfig& config,
                                                           ScanProgress scan = ScanProgress());

// The client config's source: `source` when set (a pacs source's empty cache_dir becomes
// state_dir/pacs), else data_dir and labels_csv as a dicom_folder source.
DataSourceConfig SourceOf(const ClientConfig& config);

// Loads any image file a source lists by its content: JPEG, PNG, or else DICOM. 2D only so far
// (depth must be 0).
absl::StatusOr<std::vector<float>> LoadImageFile(const std::string& path, const PixelShape& shape);

// Shared by the sources (client/data_source.cc).
namespace source_internal {

// Adds `sample` to `data`'s train or test split by its patient's hash.
void AddToSplit(Sample sample, double test_fraction, Dataset* data);
// The second pass of a CSV layout's listing: checks each sample's image file (CheckImageFile,
// the slow part: it reads the file's header), skips those that fail and adds the others to the
// split, reporting (done, total) to `scan` (may be empty) after each.
void CheckFilesAndSplit(std::vector<Sample> pending, double test_fraction, const ScanProgress& scan,
                        Dataset* data);
// Counts and logs a skipped file (or CSV row) with its reason.
void Skip(const std::string& what, const std::string& reason, SkipKind kind, Dataset* data);
// The same for a file whose check failed with `status`: NOT_FOUND is a missing file, anything
// else an unreadable one.
void Skip(const std::string& what, const absl::Status& status, Dataset* data);
// Checks that test_fraction is in [0, 1].
absl::Status CheckTestFraction(double test_fraction);
// Applies uncertain-label policy to a CheXpert-labeler value: "1.0" 1, "0.0" 0, "-1.0" by
// `policy`, "" unknown (NaN). Anything else is an error naming the value.
absl::StatusOr<float> ChexpertValue(const std::string& text, UncertainPolicy policy);

}  // namespace source_internal
}  // namespace fl
