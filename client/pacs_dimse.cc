#include "client/pacs_dimse.h"

#include <mutex>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"
#include "dcmtk/dcmdata/dcdeftag.h"
#include "dcmtk/dcmdata/dcuid.h"
#include "dcmtk/dcmnet/assoc.h"
#include "dcmtk/dcmnet/diutil.h"
#include "dcmtk/dcmnet/scu.h"
#include "dcmtk/dcmtls/tlsscu.h"
#include "dcmtk/oflog/oflog.h"
#include "common/status.h"

namespace fl {

// Routes the C-STORE requests of a C-GET to the current StoreFn; set only while Get runs.
struct PacsAssociation::Hook {
  const StoreFn* store = nullptr;
  absl::Status stopped;  // why a StoreFn stopped the retrieval
};

namespace {

constexpr int kDefaultTimeoutSeconds = 30;

const char* const kStorageClasses[] = {
    UID_ComputedRadiographyImageStorage,
    UID_DigitalXRayImageStorageForPresentation,
    UID_DigitalXRayImageStorageForProcessing,
    UID_DigitalMammographyXRayImageStorageForPresentation,
    UID_DigitalMammographyXRayImageStorageForProcessing,
    UID_CTImageStorage,
    UID_EnhancedCTImageStorage,
    UID_MRImageStorage,
    UID_EnhancedMRImageStorage,
    UID_SecondaryCaptureImageStorage,
    UID_MultiframeGrayscaleByteSecondaryCaptureImageStorage,
    UID_MultiframeGrayscaleWordSecondaryCaptureImageStorage,
    UID_UltrasoundImageStorage,
    UID_XRayAngiographicImageStorage,
};

// Uncompressed first: a PACS that stores them so sends them as stored, without transcoding.
const char* const kTransferSyntaxes[] = {
    UID_LittleEndianExplicitTransferSyntax,
    UID_LittleEndianImplicitTransferSyntax,
    UID_JPEGProcess14SV1TransferSyntax,
    UID_JPEGLSLosslessTransferSyntax,
};

// The C-STORE requests of a C-GET go to the hook's StoreFn instead of DcmSCU's own files.
template <class Base>
class HookedScu : public Base {
 public:
  explicit HookedScu(PacsAssociation::Hook* hook) : hook_(hook) {}

  OFCondition handleSTORERequest(const T_ASC_PresentationContextID /*presID*/, DcmDataset* instance,
                                 OFBool& /*continue_session*/, Uint16& store_status) override {
    if (instance == nullptr || hook_->store == nullptr) {
      store_status = STATUS_STORE_Error_CannotUnderstand;
      return EC_Normal;
    }
    const absl::Status stored = (*hook_->store)(instance);  // DcmSCU deletes `instance`
    if (stored.ok()) {
      store_status = STATUS_Success;
      return EC_Normal;
    }
    if (absl::IsDataLoss(stored)) {
      store_status = STATUS_STORE_Error_CannotUnderstand;
      return EC_Normal;
    }
    store_status = STATUS_STORE_Refused_OutOfResources;
    hook_->stopped = stored;
    return EC_IllegalCall;  // stops the retrieval
  }

 private:
  PacsAssociation::Hook* const hook_;
};

std::string Peer(const PacsSource& config) {
  return absl::StrCat(config.host(), ":", config.port(), " (AE ", config.called_ae_title(), ")");
}

// DcmSCU keeps the PACS's reject reason to itself (its debug log), so a rejected association is
// asked for again, bare (Verification only), to read the reason. A PACS rejects by AE title or
// host before it looks at what is proposed, so the reason is the same.
std::string RejectReason(const PacsSource& config) {
  T_ASC_Network* net = nullptr;
  if (ASC_initializeNetwork(NET_REQUESTOR, 0, kDefaultTimeoutSeconds, &net).bad()) return "";
  T_ASC_Parameters* params = nullptr;
  ASC_createAssociationParameters(&params, ASC_DEFAULTMAXPDU);
  ASC_setAPTitles(params, config.calling_ae_title().c_str(), config.called_ae_title().c_str(),
                  nullptr);
  const std::string address = absl::StrCat(config.host(), ":", config.port());
  ASC_setPresentationAddresses(params, "localhost", address.c_str());
  const char* syntaxes[] = {UID_LittleEndianImplicitTransferSyntax};
  ASC_addPresentationContext(params, 1, UID_VerificationSOPClass, syntaxes, 1);
  T_ASC_Association* assoc = nullptr;
  const OFCondition cond = ASC_requestAssociation(net, params, &assoc);
  std::string reason;
  if (cond == DUL_ASSOCIATIONREJECTED) {
    T_ASC_RejectParameters rejected;
    ASC_getRejectParameters(params, &rejected);
    OFString text;
    ASC_printRejectParameters(text, &rejected);
    reason = absl::StrReplaceAll(absl::StripTrailingAsciiWhitespace(text.c_str()), {{"\n", "; "}});
  } else if (cond.good()) {
    ASC_releaseAssociation(assoc);
  }
  if (assoc != nullptr) {
    ASC_destroyAssociation(&assoc);  // frees `params` with it
  } else {
    ASC_destroyAssociationParameters(&params);
  }
  ASC_dropNetwork(&net);
  return reason;
}

absl::Status ConfigureTls(const TlsConfig& tls, DcmTLSSCU* scu) {
  for (const std::string* file : {&tls.ca_file(), &tls.cert_file(), &tls.key_file()}) {
    if (!file->empty() && !OFStandard::fileExists(file->c_str())) {
      return absl::InvalidArgumentError(absl::StrCat("source.pacs.tls: cannot read ", *file));
    }
  }
  scu->addTrustedCertFile(tls.ca_file().c_str());
  scu->setPeerCertVerification(DCV_requireCertificate);
  if (!tls.cert_file().empty()) {
    scu->enableAuthentication(tls.key_file().c_str(), tls.cert_file().c_str(), "");
  }
  return absl::OkStatus();
}

absl::Status Propose(DcmSCU* scu) {
  OFList<OFString> syntaxes;
  for (const char* ts : kTransferSyntaxes) syntaxes.push_back(ts);
  OFCondition cond =
      scu->addPresentationContext(UID_FINDStudyRootQueryRetrieveInformationModel, syntaxes);
  if (cond.good()) {
    cond = scu->addPresentationContext(UID_GETStudyRootQueryRetrieveInformationModel, syntaxes);
  }
  for (const char* sop_class : kStorageClasses) {
    if (cond.good()) cond = scu->addPresentationContext(sop_class, syntaxes, ASC_SC_ROLE_SCP);
  }
  if (cond.bad()) return absl::InternalError(absl::StrCat("DIMSE: ", cond.text()));
  return absl::OkStatus();
}

absl::Status OpenFailed(const PacsSource& config, const OFCondition& cond) {
  if (cond == DUL_ASSOCIATIONREJECTED) {
    const std::string reason = config.has_tls() ? "" : RejectReason(config);
    return absl::PermissionDeniedError(
        absl::StrCat("PACS ", Peer(config), " rejected the association from AE ",
                     config.calling_ae_title(), ": ", reason.empty() ? "no reason given" : reason,
                     " (is our AE title known to the PACS, and its called AE title right?)"));
  }
  return absl::UnavailableError(
      absl::StrCat("cannot open an association with PACS ", Peer(config), ": ", cond.text(),
                   config.has_tls() ? " (is it up, and does it speak DICOM TLS at this port?)"
                                    : " (is it up at this host and port, without TLS?)"));
}

std::string Value(DcmDataset* ds, const DcmTagKey& tag) {
  OFString value;
  if (ds == nullptr || ds->findAndGetOFStringArray(tag, value).bad()) return "";
  return std::string(absl::StripAsciiWhitespace(value.c_str()));
}

absl::Status PutKeys(const char* level, const DicomKeys& keys, DcmDataset* ds) {
  OFCondition cond = ds->putAndInsertString(DCM_QueryRetrieveLevel, level);
  for (const auto& [tag, value] : keys) {
    if (cond.good()) cond = ds->putAndInsertString(tag, value.c_str());
  }
  if (cond.bad()) return absl::InvalidArgumentError(absl::StrCat("C-FIND keys: ", cond.text()));
  return absl::OkStatus();
}

}  // namespace

PacsAssociation::PacsAssociation(std::unique_ptr<Hook> hook, std::unique_ptr<DcmSCU> scu,
                                 std::string peer)
    : hook_(std::move(hook)), scu_(std::move(scu)), peer_(std::move(peer)) {}

PacsAssociation::~PacsAssociation() {
  if (!scu_->isConnected()) return;
  if (broken_) {
    scu_->abortAssociation();
  } else {
    scu_->releaseAssociation();
  }
}

absl::StatusOr<std::unique_ptr<PacsAssociation>> PacsAssociation::Open(const PacsSource& config) {
  static std::once_flag quiet;  // our errors carry DCMTK's reasons; its own log would repeat them
  std::call_once(quiet, [] {
    OFLog::getLogger("dcmtk.dcmnet").setLogLevel(OFLogger::FATAL_LOG_LEVEL);
    OFLog::getLogger("dcmtk.dcmtls").setLogLevel(OFLogger::FATAL_LOG_LEVEL);
  });
  auto hook = std::make_unique<Hook>();
  std::unique_ptr<DcmSCU> scu;
  if (config.has_tls()) {
    auto tls = std::make_unique<HookedScu<DcmTLSSCU>>(hook.get());
    RETURN_IF_ERROR(ConfigureTls(config.tls(), tls.get()));
    scu = std::move(tls);
  } else {
    scu = std::make_unique<HookedScu<DcmSCU>>(hook.get());
  }
  const int timeout = config.timeout_seconds() > 0 ? static_cast<int>(config.timeout_seconds())
                                                   : kDefaultTimeoutSeconds;
  scu->setAETitle(config.calling_ae_title().c_str());
  scu->setPeerHostName(config.host().c_str());
  scu->setPeerPort(static_cast<Uint16>(config.port()));
  scu->setPeerAETitle(config.called_ae_title().c_str());
  scu->setConnectionTimeout(timeout);
  scu->setACSETimeout(timeout);
  scu->setDIMSETimeout(timeout);
  scu->setDIMSEBlockingMode(DIMSE_NONBLOCKING);
  RETURN_IF_ERROR(Propose(scu.get()));
  OFCondition cond = scu->initNetwork();
  if (cond.bad()) {
    return absl::InvalidArgumentError(
        absl::StrCat("DIMSE network for ", Peer(config), ": ", cond.text()));
  }
  cond = scu->negotiateAssociation();
  if (cond.bad()) return OpenFailed(config, cond);
  if (scu->findPresentationContextID(UID_FINDStudyRootQueryRetrieveInformationModel, "") == 0 ||
      scu->findPresentationContextID(UID_GETStudyRootQueryRetrieveInformationModel, "") == 0) {
    scu->releaseAssociation();
    return absl::FailedPreconditionError(
        absl::StrCat("PACS ", Peer(config),
                     " accepted the association but not C-FIND and C-GET (Study Root) "
                     "for AE ",
                     config.calling_ae_title(), ": allow both for it on the PACS"));
  }
  return std::unique_ptr<PacsAssociation>(
      new PacsAssociation(std::move(hook), std::move(scu), Peer(config)));
}

absl::StatusOr<std::vector<DicomRow>> PacsAssociation::Find(const char* level,
                                                            const DicomKeys& keys) {
  DcmDataset query;
  RETURN_IF_ERROR(PutKeys(level, keys, &query));
  const T_ASC_PresentationContextID pc =
      scu_->findPresentationContextID(UID_FINDStudyRootQueryRetrieveInformationModel, "");
  OFList<QRResponse*> responses;
  const OFCondition cond = scu_->sendFINDRequest(pc, &query, &responses);
  std::vector<DicomRow> rows;
  Uint16 final_status = STATUS_Success;
  for (QRResponse* response : responses) {
    if (DICOM_PENDING_STATUS(response->m_status)) {
      DicomRow& row = rows.emplace_back();
      for (const auto& key : keys) row[key.first] = Value(response->m_dataset, key.first);
    } else {
      final_status = response->m_status;
    }
    delete response;
  }
  if (cond.bad()) {
    broken_ = true;
    return absl::UnavailableError(
        absl::StrCat("C-FIND (", level, ") with PACS ", peer_, " failed: ", cond.text()));
  }
  if (final_status != STATUS_Success) {
    return absl::FailedPreconditionError(
        absl::StrCat("PACS ", peer_, " refused the C-FIND (", level, "): status 0x",
                     absl::Hex(final_status), " (", DU_cfindStatusString(final_status), ")"));
  }
  return rows;
}

absl::Status PacsAssociation::Get(const char* level, const DicomKeys& keys, const StoreFn& store,
                                  GetTally* tally) {
  DcmDataset request;
  RETURN_IF_ERROR(PutKeys(level, keys, &request));
  const T_ASC_PresentationContextID pc =
      scu_->findPresentationContextID(UID_GETStudyRootQueryRetrieveInformationModel, "");
  hook_->store = &store;
  hook_->stopped = absl::OkStatus();
  OFList<RetrieveResponse*> responses;
  const OFCondition cond = scu_->sendCGETRequest(pc, &request, &responses);
  hook_->store = nullptr;
  Uint16 final_status = STATUS_Success;
  for (RetrieveResponse* response : responses) {
    if (!DICOM_PENDING_STATUS(response->m_status)) {
      final_status = response->m_status;
      tally->completed += response->m_numberOfCompletedSubops;
      tally->failed += response->m_numberOfFailedSubops;
      tally->warning += response->m_numberOfWarningSubops;
    }
    delete response;
  }
  if (!hook_->stopped.ok()) {
    broken_ = true;
    return hook_->stopped;
  }
  if (cond.bad()) {
    broken_ = true;
    return absl::UnavailableError(absl::StrCat("C-GET (", level, ") from PACS ", peer_,
                                               " broke off mid-transfer: ", cond.text()));
  }
  // Some or all sub-operations failed (a warning, or 0xA702 when none succeeded, as when we
  // refuse every object as corrupt): counted in `tally`, not a refusal of the request.
  if (final_status != STATUS_Success && (final_status & 0xf000) != 0xb000 &&
      final_status != STATUS_GET_Refused_OutOfResourcesSubOperations) {
    return absl::FailedPreconditionError(absl::StrCat("PACS ", peer_, " refused the C-GET (", level,
                                                      "): status 0x", absl::Hex(final_status), " (",
                                                      DU_cgetStatusString(final_status), ")"));
  }
  return absl::OkStatus();
}

}  // namespace fl
