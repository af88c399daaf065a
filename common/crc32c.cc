#include "common/crc32c.h"

#include <array>
#include <cstring>

#if defined(__x86_64__)
#include <cpuid.h>
#include <nmmintrin.h>
#endif

namespace fl {
namespace {

constexpr uint32_t kPoly = 0x82F63B78u;  // reflected Castagnoli polynomial

std::array<uint32_t, 256> MakeTable() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ kPoly : c >> 1;
    table[i] = c;
  }
  return table;
}

uint32_t SoftwareCrc(uint32_t crc, const uint8_t* p, size_t n) {
  static const std::array<uint32_t, 256> table = MakeTable();
  for (size_t i = 0; i < n; ++i) crc = table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
  return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t HardwareCrcSerial(uint32_t crc, const uint8_t* p,
                                                             size_t n) {
  uint64_t c = crc;
  while (n >= 8) {
    uint64_t word;
    std::memcpy(&word, p, 8);
    c = _mm_crc32_u64(c, word);
    p += 8;
    n -= 8;
  }
  uint32_t c32 = static_cast<uint32_t>(c);
  while (n-- > 0) c32 = _mm_crc32_u8(c32, *p++);
  return c32;
}

// The crc32 instruction has a latency of 3 cycles and a throughput of 1: three independent
// streams over adjacent blocks run three times as fast as one, and are then combined. The CRC
// state is linear: the state after block A then block B is Shift_|B|(state after A) xor the
// state after B alone from 0, where Shift_L feeds L zero bytes.
constexpr size_t kStreamBytes = 4096;

// Shift_L as four byte-indexed tables: Shift_L(x) = xor of T[k][byte k of x].
struct ShiftTables {
  uint32_t t[4][256];
};

ShiftTables MakeShiftTables(size_t zeros) {
  static const std::array<uint8_t, 2 * kStreamBytes> kZeros{};
  uint32_t bit_image[32];
  for (int i = 0; i < 32; ++i) bit_image[i] = HardwareCrcSerial(1u << i, kZeros.data(), zeros);
  ShiftTables tables{};
  for (int k = 0; k < 4; ++k) {
    for (uint32_t v = 0; v < 256; ++v) {
      uint32_t image = 0;
      for (int b = 0; b < 8; ++b) {
        if (v & (1u << b)) image ^= bit_image[8 * k + b];
      }
      tables.t[k][v] = image;
    }
  }
  return tables;
}

uint32_t Shift(const ShiftTables& s, uint32_t x) {
  return s.t[0][x & 0xFF] ^ s.t[1][(x >> 8) & 0xFF] ^ s.t[2][(x >> 16) & 0xFF] ^ s.t[3][x >> 24];
}

__attribute__((target("sse4.2"))) uint32_t HardwareCrc(uint32_t crc, const uint8_t* p, size_t n) {
  static const ShiftTables shift1 = MakeShiftTables(kStreamBytes);
  static const ShiftTables shift2 = MakeShiftTables(2 * kStreamBytes);
  while (n >= 3 * kStreamBytes) {
    uint64_t c0 = crc, c1 = 0, c2 = 0;
    for (size_t i = 0; i < kStreamBytes; i += 8) {
      uint64_t w0, w1, w2;
      std::memcpy(&w0, p + i, 8);
      std::memcpy(&w1, p + kStreamBytes + i, 8);
      std::memcpy(&w2, p + 2 * kStreamBytes + i, 8);
      c0 = _mm_crc32_u64(c0, w0);
      c1 = _mm_crc32_u64(c1, w1);
      c2 = _mm_crc32_u64(c2, w2);
    }
    crc = Shift(shift2, static_cast<uint32_t>(c0)) ^ Shift(shift1, static_cast<uint32_t>(c1)) ^
          static_cast<uint32_t>(c2);
    p += 3 * kStreamBytes;
    n -= 3 * kStreamBytes;
  }
  return HardwareCrcSerial(crc, p, n);
}

bool HasSse42() {
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return false;
  return (ecx & bit_SSE4_2) != 0;
}
#endif

}  // namespace

uint32_t Crc32cExtend(uint32_t crc, const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
#if defined(__x86_64__)
  static const bool hardware = HasSse42();
  crc = hardware ? HardwareCrc(crc, p, n) : SoftwareCrc(crc, p, n);
#else
  crc = SoftwareCrc(crc, p, n);
#endif
  return ~crc;
}

}  // namespace fl
