#include "common/digest.h"

#include "gtest/gtest.h"

namespace fl {
namespace {

TEST(TensorDigestTest, MatchesSha256OfTheFramedTensors) {
  // sha256 of eight zero bytes (the count, 0): a value anyone can recompute.
  EXPECT_EQ(TensorDigest({}), "af5570f5a1810b7af78caf4bc70a660f0df51e42baf91d4de5b2328de0e83dfc");
  // Python: sha256(L(1) + L(1) + b"w" + L(2) + L(2) + L(1) + L(8) + pack("<2f", 1, -2.5)),
  // L(n) = pack("<Q", n).
  EXPECT_EQ(TensorDigest({{"w", {2, 1}, {1.0f, -2.5f}}}),
            "70f00238961569a02ee852580a916b31244fe749bdf302fd40267604552de2f4");
}

TEST(TensorDigestTest, NamesShapesAndValuesAllCount) {
  const TensorList base = {{"a", {2}, {1, 2}}, {"b", {1}, {3}}};
  TensorList renamed = base, reshaped = base, changed = base, recut = base;
  renamed[1].name = "c";
  reshaped[0].shape = {1, 2};
  changed[1].data[0] = 3.0000002f;
  recut = {{"a", {3}, {1, 2, 3}}};
  const std::string digest = TensorDigest(base);
  EXPECT_EQ(TensorDigest(base), digest);
  for (const TensorList* other : {&renamed, &reshaped, &changed, &recut}) {
    EXPECT_NE(TensorDigest(*other), digest);
  }
}

TEST(Sha256HexTest, MatchesSha256sum) {
  // printf abc | sha256sum
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

}  // namespace
}  // namespace fl
