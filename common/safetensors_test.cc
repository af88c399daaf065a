#include "common/safetensors.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

namespace fl {
namespace {

std::string TempPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return std::string(dir ? dir : "/tmp") + "/safetensors_test_" + std::to_string(::getpid()) + "_" +
         name;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

// A file made by hand: the given JSON header (padded) followed by `data`.
std::string MakeFile(std::string header, const std::string& data) {
  header.append((8 - header.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  return out + header + data;
}

TensorList Sample() {
  TensorList t(3);
  t[0] = {"conv1.weight", {2, 1, 2, 2}, {1, 2, 3, 4, 5, 6, 7, 8}};
  t[1] = {"fc.bias", {3}, {-1.5f, 0.f, 3.25e-8f}};
  t[2] = {"scalar", {}, {42.f}};
  return t;
}

TEST(SafetensorsTest, RoundTripKeepsOrderShapesAndValues) {
  std::string path = TempPath("roundtrip.safetensors");
  TensorList in = Sample();
  ASSERT_TRUE(WriteSafetensors(path, in).ok());
  auto out = ReadSafetensors(path);
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->size(), in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    EXPECT_EQ((*out)[i].name, in[i].name);
    EXPECT_EQ((*out)[i].shape, in[i].shape);
    EXPECT_EQ((*out)[i].data, in[i].data);
  }
  EXPECT_NE(access((path + ".tmp").c_str(), F_OK), 0) << "temp file left behind";
  std::remove(path.c_str());
}

TEST(SafetensorsTest, HeaderIsAlignedAndReadableJson) {
  std::string path = TempPath("layout.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, Sample()).ok());
  std::string bytes = ReadFile(path);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i)
    n |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(bytes.size(), 8 + n + (8 + 3 + 1) * sizeof(float));
  std::string header = bytes.substr(8, n);
  EXPECT_NE(header.find("\"conv1.weight\":{\"dtype\":\"F32\",\"shape\":[2,1,2,2],"
                        "\"data_offsets\":[0,32]}"),
            std::string::npos)
      << header;
  std::remove(path.c_str());
}

TEST(SafetensorsTest, MetadataRoundTripsWithEscapes) {
  std::string path = TempPath("meta.safetensors");
  std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "a \"quoted\"\n\\ line"}};
  ASSERT_TRUE(WriteSafetensors(path, Sample(), meta).ok());
  std::map<std::string, std::string> got;
  auto out = ReadSafetensors(path, &got);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(got, meta);
  std::remove(path.c_str());
}

TEST(SafetensorsTest, ReadsUnicodeEscapesAndAnyKeyOrder) {
  std::string path = TempPath("unicode.safetensors");
  std::string data(8, '\0');
  WriteFile(path, MakeFile("{\"b\":{\"data_offsets\":[4,8],\"shape\":[1],\"dtype\":\"F32\"},"
                           "\"__metadata__\":{\"k\":\"caf\\u00e9 \\ud83d\\ude00\"},"
                           "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                           data));
  std::map<std::string, std::string> meta;
  auto out = ReadSafetensors(path, &meta);
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->size(), 2u);
  EXPECT_EQ((*out)[0].name, "a");  // data order
  EXPECT_EQ(meta["k"], "caf\xC3\xA9 \xF0\x9F\x98\x80");
  std::remove(path.c_str());
}

TEST(SafetensorsTest, EmptyListRoundTrips) {
  std::string path = TempPath("empty.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {}).ok());
  auto out = ReadSafetensors(path);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_TRUE(out->empty());
  std::remove(path.c_str());
}

TEST(SafetensorsTest, WriteRefusesBadInput) {
  std::string path = TempPath("bad_write.safetensors");
  TensorList wrong_size = {{"w", {2, 2}, {1, 2, 3}}};
  EXPECT_FALSE(WriteSafetensors(path, wrong_size).ok());
  TensorList dup = {{"w", {1}, {1}}, {"w", {1}, {2}}};
  EXPECT_FALSE(WriteSafetensors(path, dup).ok());
  EXPECT_FALSE(WriteSafetensors("/nonexistent-dir/x.safetensors", Sample()).ok());
  EXPECT_NE(access(path.c_str(), F_OK), 0);
}

TEST(SafetensorsTest, MissingFileIsNotFound) {
  auto out = ReadSafetensors(TempPath("does-not-exist"));
  EXPECT_EQ(out.status().code(), absl::StatusCode::kNotFound);
}

TEST(SafetensorsTest, TruncatedFileRefused) {
  std::string path = TempPath("truncated.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, Sample()).ok());
  std::string bytes = ReadFile(path);
  for (size_t cut : {size_t{0}, size_t{5}, size_t{8}, size_t{20}, bytes.size() - 1}) {
    WriteFile(path, bytes.substr(0, cut));
    auto out = ReadSafetensors(path);
    EXPECT_FALSE(out.ok()) << "cut at " << cut;
  }
  WriteFile(path, bytes + "extra");  // trailing bytes no tensor claims
  EXPECT_FALSE(ReadSafetensors(path).ok());
  std::remove(path.c_str());
}

TEST(SafetensorsTest, CorruptHeaderRefused) {
  std::string path = TempPath("corrupt.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, Sample()).ok());
  std::string bytes = ReadFile(path);
  std::string huge_len = bytes;
  huge_len[7] = '\x7f';
  WriteFile(path, huge_len);
  EXPECT_FALSE(ReadSafetensors(path).ok());
  std::string broken_json = bytes;
  broken_json[8] = '[';
  WriteFile(path, broken_json);
  EXPECT_FALSE(ReadSafetensors(path).ok());
  std::string cut_json = bytes;
  cut_json[9] = '{';
  WriteFile(path, cut_json);
  EXPECT_FALSE(ReadSafetensors(path).ok());
  std::remove(path.c_str());
}

// Each header is wrong in one way; the error must name the offending tensor
// where there is one.
TEST(SafetensorsTest, InvalidEntriesRefusedWithName) {
  std::string path = TempPath("invalid.safetensors");
  std::string data(8, '\0');
  struct Case {
    std::string header;
    std::string mention;
  };
  const Case cases[] = {
      {R"({"x":{"dtype":"F16","shape":[4],"data_offsets":[0,8]}})", "x"},
      {R"({"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", "x"},
      {R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"y":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
       "overlap"},
      {R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", "x"},
      {R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", "data bytes"},
      {R"({"x":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", "unsupported"},
      {R"({"x":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", "non-integer"},
      {R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", "x"},
      {R"({"x":{"dtype":"F32","shape":[2]}})", "x"},
      {R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"x":{"dtype":"F32","shape":[0],"data_offsets":[8,8]}})",
       "duplicate"},
      {R"({"__metadata__":{"k":1},"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
       "__metadata__"},
      {R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}} junk)", "trailing"},
      {R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8])", "expected"},
  };
  for (const Case& c : cases) {
    WriteFile(path, MakeFile(c.header, data));
    auto out = ReadSafetensors(path);
    ASSERT_FALSE(out.ok()) << c.header;
    EXPECT_NE(std::string(out.status().message()).find(c.mention), std::string::npos)
        << c.header << " -> " << out.status();
  }
  std::remove(path.c_str());
}

}  // namespace
}  // namespace fl
