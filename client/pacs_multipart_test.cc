// The multipart/related reader of the DICOMweb transport on hand-made bodies.
#include "client/pacs_multipart.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fl {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

struct Collected {
  std::vector<MultipartPart> parts;
  MultipartReader::PartFn Fn() {
    return [this](MultipartPart& part) {
      parts.push_back(std::move(part));
      return absl::OkStatus();
    };
  }
  std::vector<std::string> Bodies() const {
    std::vector<std::string> out;
    for (const MultipartPart& p : parts) out.push_back(p.body);
    return out;
  }
};

// Feeds `body` in pieces of `piece` bytes.
absl::Status FeedAll(MultipartReader& reader, const std::string& body, size_t piece) {
  for (size_t at = 0; at < body.size(); at += piece) {
    absl::Status fed = reader.Feed(absl::string_view(body).substr(at, piece));
    if (!fed.ok()) return fed;
  }
  return reader.Finish();
}

constexpr char kBodyText[] =  // with a NUL inside: its size is sizeof's
    "This preamble is ignored.\r\n"
    "--XyZ\r\n"
    "Content-Type: application/dicom\r\n"
    "Content-Length: 9\r\n"
    "\r\n"
    "DICM\r\n\0\r-\r\n"  // CR, LF, NUL and a dash inside a body are data
    "--XyZ  \r\n"        // transport padding after the delimiter
    "content-type:application/dicom\r\n"
    "X-Folded: one\r\n two\r\n"
    "\r\n"
    "second\r\n--XY\r\n"  // a prefix of the delimiter inside the body
    "--XyZ--\r\n"
    "an epilogue, ignored; --XyZ\r\n";
const std::string kBody(kBodyText, sizeof(kBodyText) - 1);

TEST(MultipartTest, BoundaryComesFromTheContentTypeQuotedOrNot) {
  EXPECT_EQ(*MultipartBoundary(R"(multipart/related; type="application/dicom"; boundary=abc-1)"),
            "abc-1");
  EXPECT_EQ(*MultipartBoundary(R"(Multipart/Related;boundary="a;b c";type="application/dicom")"),
            "a;b c");
  EXPECT_FALSE(MultipartBoundary("application/dicom+json").ok());
  EXPECT_FALSE(MultipartBoundary("multipart/related; type=\"application/dicom\"").ok());
  EXPECT_FALSE(MultipartBoundary("multipart/related; boundary=\"\"").ok());
}

TEST(MultipartTest, PartsWithHeadersPreambleAndEpilogue) {
  const std::string body(kBody.data(), kBody.size());
  for (size_t piece : {body.size(), size_t{1}, size_t{2}, size_t{3}, size_t{7}}) {
    Collected got;
    MultipartReader reader("XyZ", got.Fn());
    ASSERT_TRUE(FeedAll(reader, body, piece).ok()) << "pieces of " << piece;
    EXPECT_EQ(reader.parts(), 2);
    ASSERT_EQ(got.parts.size(), 2u);
    EXPECT_EQ(got.parts[0].body, std::string("DICM\r\n\0\r-", 9));
    EXPECT_EQ(got.parts[0].headers["content-type"], "application/dicom");
    EXPECT_EQ(got.parts[0].headers["content-length"], "9");
    EXPECT_EQ(got.parts[1].body, "second\r\n--XY");
    EXPECT_EQ(got.parts[1].headers["content-type"], "application/dicom");
    EXPECT_EQ(got.parts[1].headers["x-folded"], "one two");
  }
}

TEST(MultipartTest, ABodyStartingWithTheDelimiterAndAPartWithoutHeaders) {
  Collected got;
  MultipartReader reader("b", got.Fn());
  ASSERT_TRUE(FeedAll(reader, "--b\r\n\r\nbare\r\n--b\r\n\r\n\r\n--b--", 4).ok());
  EXPECT_THAT(got.Bodies(), ElementsAre("bare", ""));
  EXPECT_TRUE(got.parts[0].headers.empty());
}

TEST(MultipartTest, ATruncatedBodyIsAnErrorAfterTheCompleteParts) {
  const std::string body(kBody.data(), kBody.size());
  const size_t cut = body.find("second");
  Collected got;
  MultipartReader reader("XyZ", got.Fn());
  ASSERT_TRUE(reader.Feed(body.substr(0, cut + 3)).ok());
  const absl::Status finished = reader.Finish();
  EXPECT_EQ(finished.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(finished.message()), HasSubstr("after 1 complete parts"));
  EXPECT_EQ(got.parts.size(), 1u);  // the part cut short never reached the callback

  MultipartReader nothing("XyZ", got.Fn());
  ASSERT_TRUE(nothing.Feed("<html>502 Bad Gateway</html>").ok());
  EXPECT_THAT(std::string(nothing.Finish().message()), HasSubstr("no delimiter at all"));
}

TEST(MultipartTest, MalformedBodiesAndCallbackErrorsStopTheReading) {
  Collected got;
  MultipartReader garbage("b", got.Fn());
  EXPECT_EQ(garbage.Feed("--b\r\nno colon here\r\n\r\nx\r\n--b--").code(),
            absl::StatusCode::kDataLoss);
  MultipartReader after("b", got.Fn());
  EXPECT_EQ(after.Feed("--bogus\r\n").code(), absl::StatusCode::kDataLoss);
  EXPECT_FALSE(after.Feed("--b--").ok());  // nothing is taken after an error

  MultipartReader full("b", [](MultipartPart&) { return absl::ResourceExhaustedError("disk"); });
  EXPECT_EQ(full.Feed("--b\r\n\r\none\r\n--b\r\n\r\ntwo\r\n--b--").code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(full.parts(), 1);

  MultipartReader small("b", got.Fn(), 4);
  EXPECT_EQ(small.Feed("--b\r\n\r\nfive and more bytes").code(),
            absl::StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace fl
