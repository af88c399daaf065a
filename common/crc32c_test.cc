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

}  // namespace
}  // namespace fl
