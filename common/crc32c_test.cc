#include "common/crc32c.h"

#include <string>

#include <gtest/gtest.h>

namespace fl {
namespace {

TEST(Crc32cTest, KnownVectors) {
  // RFC 3720 B.4 test vectors.
  std::string zeros(32, '\0');
  EXPECT_EQ(Crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);
  std::string ones(32, '\xFF');
  EXPECT_EQ(Crc32c(ones.data(), ones.size()), 0x62A8AB43u);
  EXPECT_EQ(Crc32c("123456789", 9), 0xE3069283u);
}

TEST(Crc32cTest, ExtendEqualsWhole) {
  std::string text = "federated learning over mutual TLS, chunk by chunk";
  uint32_t whole = Crc32c(text.data(), text.size());
  uint32_t part = Crc32c(text.data(), 7);
  part = Crc32cExtend(part, text.data() + 7, text.size() - 7);
  EXPECT_EQ(whole, part);
}

// Long inputs take the three-stream path; every length and split must agree with the bytewise
// reference.
TEST(Crc32cTest, LongInputsMatchTheBytewiseDefinition) {
  std::string data(3 * 4096 * 3 + 123, '\0');
  uint32_t x = 12345;
  for (char& c : data) {
    x = x * 1103515245u + 12345u;
    c = static_cast<char>(x >> 16);
  }
  auto reference = [](const std::string& s, size_t n) {
    uint32_t crc = ~0u;
    for (size_t i = 0; i < n; ++i) {
      crc ^= static_cast<uint8_t>(s[i]);
      for (int k = 0; k < 8; ++k) crc = (crc & 1) ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
    }
    return ~crc;
  };
  for (size_t n :
       {size_t{0}, size_t{12287}, size_t{12288}, size_t{12289}, size_t{24576 + 7}, data.size()}) {
    EXPECT_EQ(Crc32c(data.data(), n), reference(data, n)) << n;
  }
  const uint32_t split =
      Crc32cExtend(Crc32c(data.data(), 5000), data.data() + 5000, data.size() - 5000);
  EXPECT_EQ(split, reference(data, data.size()));
}

}  // namespace
}  // namespace fl
