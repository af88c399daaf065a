#include "tools/phantom.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "dcmtk/config/osconfig.h"
#include "dcmtk/dcmdata/dcdeftag.h"
#include "dcmtk/dcmdata/dcfilefo.h"
#include "dcmtk/dcmdata/dcuid.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/status.h"
#include "tools/dicom_write.h"

namespace fl {
namespace {

constexpr double kPi = 3.14159265358979323846;
enum Finding {
  kCardiomegaly,
  kCongestion,
  kEffusionR,
  kEffusionL,
  kInfiltrateR,
  kInfiltrateL,
  kAtelectasisR,
  kAtelectasisL
};

// SplitMix64: fast, and the same stream on every platform (std:: distributions are not).
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double Uniform() { return static_cast<double>(Next() >> 11) * (1.0 / 9007199254740992.0); }
  double Uniform(double lo, double hi) { return lo + (hi - lo) * Uniform(); }
  double Normal() {
    const double u = std::max(Uniform(), 1e-300);
    return std::sqrt(-2.0 * std::log(u)) * std::cos(2.0 * kPi * Uniform());
  }

 private:
  uint64_t state_;
};

struct Segment {
  double x0, y0, x1, y1, width, amp;
};
struct Blob {
  double x, y, sigma, amp;
};

// Everything random about one image, drawn in a fixed order whatever the findings are.
struct Shapes {
  double scale, theta, shift_x, shift_y, gain, heel;
  double mediastinum, lateral, lung_cy, lung_ay, dome[2];
  double ctr_normal, ctr_big, heart_cy;
  double rib_base, rib_spacing;
  double fluid_depth[2], meniscus[2], fluid_amp[2];
  double mediastinal_shift, diaphragm_lift;
  std::vector<Segment> vessels, congestion_vessels, plates;
  std::vector<Blob> hila, infiltrates[2], parenchyma;
};

double Smooth(double t) {
  t = std::clamp(t, 0.0, 1.0);
  return t * t * (3.0 - 2.0 * t);
}

// Distance from the midline where the lung of `side` (0: patient right = image left) has its
// lateral edge, and the x of a point at fraction f between medial (0) and lateral (1) edge.
double SideX(const Shapes& s, int side, double f) {
  const double sign = side == 0 ? -1.0 : 1.0;
  return 0.5 + sign * (s.mediastinum + f * (s.lateral - s.mediastinum));
}

void DrawVessels(Rng& rng, const Shapes& s, int per_side, double amp, double width, double max_len,
                 std::vector<Segment>* out) {
  for (int side = 0; side < 2; ++side) {
    const double sign = side == 0 ? -1.0 : 1.0;
    for (int i = 0; i < per_side; ++i) {
      const double angle = rng.Uniform(-1.25, 1.35);  // from horizontal, outward; + is down
      double x = 0.5 + sign * (s.mediastinum + rng.Uniform(0.03, 0.05));
      double y = s.lung_cy + rng.Uniform(-0.03, 0.07);
      for (int piece = 0; piece < 3; ++piece) {  // a slightly kinked, tapering branch
        const double len = rng.Uniform(0.3, 0.5) * max_len, a = angle + rng.Uniform(-0.3, 0.3);
        const double nx = x + sign * len * std::cos(a), ny = y + len * std::sin(a);
        out->push_back({x, y, nx, ny, width * (1.0 - 0.25 * piece), amp * (1.0 - 0.3 * piece)});
        x = nx;
        y = ny;
      }
    }
  }
}

void DrawFindingShapes(Rng& rng, Shapes* s) {
  for (int side = 0; side < 2; ++side) {
    s->fluid_depth[side] = rng.Uniform(0.07, 0.17);
    s->meniscus[side] = rng.Uniform(0.04, 0.08);
    s->fluid_amp[side] = rng.Uniform(0.30, 0.38);
    const int clusters = 2 + static_cast<int>(rng.Uniform() * 2);
    for (int c = 0; c < 3; ++c) {
      const double cx = SideX(*s, side, rng.Uniform(0.3, 0.85));
      const double cy = rng.Uniform(0.27, 0.52), spread = rng.Uniform(0.02, 0.05);
      for (int b = 0; b < 5 && c < clusters; ++b) {
        s->infiltrates[side].push_back({cx + spread * rng.Normal(), cy + spread * rng.Normal(),
                                        rng.Uniform(0.012, 0.03), rng.Uniform(0.08, 0.16)});
      }
    }
    const double y0 = rng.Uniform(0.50, 0.60), tilt = rng.Uniform(-0.03, 0.05);
    s->plates.push_back({SideX(*s, side, 0.15), y0, SideX(*s, side, 0.85), y0 + tilt,
                         rng.Uniform(0.010, 0.016), rng.Uniform(0.22, 0.30)});
  }
  DrawVessels(rng, *s, 18, 0.045, 0.006, 0.17, &s->congestion_vessels);
  for (int side = 0; side < 2; ++side) {
    s->hila.push_back({SideX(*s, side, 0.25), s->lung_cy + 0.03, rng.Uniform(0.06, 0.08),
                       rng.Uniform(0.10, 0.13)});
  }
  s->mediastinal_shift = rng.Uniform(0.01, 0.02);
  s->diaphragm_lift = rng.Uniform(0.03, 0.05);
}

// `value` drawn around `center`, its distance from the center multiplied by `spread` (exactly
// `value` at spread 1, so the default options keep their images).
double Spread(double value, double center, double spread) {
  return spread == 1.0 ? value : center + spread * (value - center);
}

// Scales the findings' effects by options.finding_strength k (after every draw, so that the
// random stream, and with it the patient, does not depend on it). Each finding has its own
// power of k, so that at one strength the findings are about equally hard to learn (measured
// with scripts/learning_curve.sh): an effusion's depth goes with k^1.5 (a subtle effusion only
// blunts the costophrenic angle), congestion's vessels with k^1.25, infiltrates' density with
// k, atelectasis' volume loss with k^0.75 and the heart's enlargement with sqrt(k) (small
// changes of shape to begin with).
void ScaleFindings(double k, Shapes* s) {
  if (k == 1.0) return;
  s->ctr_big = s->ctr_normal + std::sqrt(k) * (s->ctr_big - s->ctr_normal);
  const double effusion = std::pow(k, 1.5), congestion = std::pow(k, 1.25);
  const double atelectasis = std::pow(k, 0.75);
  for (int side = 0; side < 2; ++side) {
    s->fluid_amp[side] *= k;
    s->fluid_depth[side] *= effusion;
    s->meniscus[side] *= effusion;
    for (Blob& b : s->infiltrates[side]) b.amp *= k;
  }
  for (Segment& g : s->plates) g.amp *= atelectasis;
  for (Segment& g : s->congestion_vessels) g.amp *= congestion;
  for (Blob& b : s->hila) b.amp *= congestion;
  s->mediastinal_shift *= atelectasis;
  s->diaphragm_lift *= atelectasis;
}

Shapes DrawShapes(const PhantomSubject& subject, const PhantomOptions& options, uint64_t seed) {
  Rng rng(seed);
  Shapes s;
  const double v = options.variation;
  s.scale = Spread(rng.Uniform(0.92, 1.04), 0.98, v) * (subject.sex == 'M' ? 1.03 : 0.97);
  s.theta = v * rng.Uniform(-3.0, 3.0) * kPi / 180.0;
  s.shift_x = v * rng.Uniform(-0.02, 0.02);
  s.shift_y = v * rng.Uniform(-0.02, 0.02);
  s.gain = std::max(0.2, Spread(rng.Uniform(0.88, 1.12), 1.0, v)) * options.contrast;
  s.heel = v * rng.Uniform(-0.04, 0.04);
  s.mediastinum = 0.045 * s.scale;
  s.lateral = 0.31 * s.scale;
  s.lung_cy = 0.455;
  s.lung_ay = 0.28 * s.scale;
  s.dome[0] = 0.66 * s.scale + 0.04;
  s.dome[1] = s.dome[0] + rng.Uniform(0.005, 0.025);  // the left hemidiaphragm sits lower
  s.ctr_normal = std::clamp(Spread(0.42 + 0.04 * rng.Normal(), 0.42, v), Spread(0.34, 0.42, v),
                            Spread(0.50, 0.42, v));
  s.ctr_big = std::clamp(0.58 + 0.04 * rng.Normal(), 0.51, 0.68);
  s.heart_cy = v * rng.Uniform(-0.015, 0.015);  // jitter of the heart's height
  s.rib_base = rng.Uniform(0.17, 0.20);
  s.rib_spacing = rng.Uniform(0.052, 0.06) * s.scale;
  DrawVessels(rng, s, 16, 0.035, 0.0035, 0.22, &s.vessels);
  for (int i = 0; i < 60; ++i) {  // faint mottling of normal lung
    s.parenchyma.push_back({SideX(s, i % 2, rng.Uniform(0.05, 0.95)), rng.Uniform(0.2, 0.7),
                            rng.Uniform(0.01, 0.03), v * rng.Uniform(0.005, 0.02)});
  }
  DrawFindingShapes(rng, &s);
  ScaleFindings(options.finding_strength, &s);
  return s;
}

// The per-image geometry after findings that change anatomy (atelectasis: volume loss).
struct Layout {
  double dome[2], mid, heart_cx, heart_cy, heart_ax, heart_ay;
};

Layout MakeLayout(const Shapes& s, const PhantomSubject& subject) {
  Layout l;
  l.mid = 0.5;
  l.dome[0] = s.dome[0];
  l.dome[1] = s.dome[1];
  for (int side = 0; side < 2; ++side) {
    if (!subject.findings[side == 0 ? kAtelectasisR : kAtelectasisL]) continue;
    l.dome[side] -= s.diaphragm_lift;
    l.mid += (side == 0 ? -1.0 : 1.0) * s.mediastinal_shift;
  }
  const double ctr = subject.findings[kCardiomegaly] ? s.ctr_big : s.ctr_normal;
  l.heart_ax = ctr * s.lateral;            // half of ctr x (2 x lateral)
  l.heart_cx = l.mid + 0.35 * l.heart_ax;  // the heart lies mostly to the patient's left
  l.heart_ay = 0.105 * s.scale * std::sqrt(ctr / 0.42);
  l.heart_cy = l.dome[1] - 0.75 * l.heart_ay + s.heart_cy;
  return l;
}

// Soft inside-ness of an ellipse: 1 inside, 0 outside, smooth over `edge` (in radius units).
double Ellipse(double x, double y, double cx, double cy, double ax, double ay, double edge) {
  const double dx = (x - cx) / ax, dy = (y - cy) / ay;
  return Smooth((1.0 - std::sqrt(dx * dx + dy * dy)) / edge + 0.5);
}

// The lung of `side` at anatomical (x, y): 0..1.
double Lung(const Shapes& s, const Layout& l, int side, double x, double y) {
  const double sign = side == 0 ? -1.0 : 1.0;
  const double d = sign * (x - l.mid);  // distance from the midline towards this side
  if (d <= 0) return 0.0;
  const double t = std::clamp((y - (s.lung_cy - s.lung_ay)) / (2 * s.lung_ay), 0.0, 1.0);
  const double half = 0.5 * (s.lateral - s.mediastinum) * (0.72 + 0.4 * t);
  const double inside =
      Ellipse(d, y, s.mediastinum + half * 0.95, s.lung_cy, half * 1.05, s.lung_ay, 0.08);
  const double f = (d - s.mediastinum) / (s.lateral - s.mediastinum);  // 0 medial, 1 lateral
  const double dome_y = l.dome[side] + 0.09 * f * f - 0.02 * (1 - f);
  return inside * Smooth((d - s.mediastinum) / 0.012 + 0.5) * Smooth((dome_y - y) / 0.012 + 0.5);
}

double Ribs(const Shapes& s, double x, double y) {
  const double dm = std::abs(x - 0.5);
  if (dm < 0.04 || dm > s.lateral + 0.03) return 0.0;
  double v = 0.0;
  for (int k = 0; k < 10; ++k) {
    const double yc = s.rib_base + k * s.rib_spacing - 0.15 * dm + 1.5 * dm * dm;
    const double dist = std::abs(y - yc) / (0.012 * s.scale);
    if (dist < 1.0) v += 0.035 + 0.03 * dist * dist;  // brighter cortex at the edges
  }
  const double clavicle_y = 0.16 - 0.25 * (dm - 0.06) + 0.5 * (dm - 0.15) * (dm - 0.15);
  if (dm < 0.28 && std::abs(y - clavicle_y) < 0.014) v += 0.10;
  return v;
}

// A soft superellipse (|dx|^4 + |dy|^4 < 1): a body outline with straight flanks.
double Superellipse(double x, double y, double cx, double cy, double ax, double ay, double edge) {
  const double dx = (x - cx) / ax, dy = (y - cy) / ay;
  return Smooth((1.0 - std::sqrt(std::sqrt(dx * dx * dx * dx + dy * dy * dy * dy))) / edge + 0.5);
}

// Density outside the lungs: body, arms, neck, mediastinum, spine, trachea, heart and ribs.
double Tissue(const Shapes& s, const Layout& l, double x, double y) {
  const double body = Superellipse(x, y, 0.5, 0.64, s.lateral + 0.055, 0.66, 0.05);
  const double arms = std::max(Ellipse(x, y, 0.5 - s.lateral - 0.15, 0.6, 0.07, 0.7, 0.3),
                               Ellipse(x, y, 0.5 + s.lateral + 0.15, 0.6, 0.07, 0.7, 0.3));
  const double dx = (x - 0.5) / (s.lateral + 0.055);
  double d = std::max(0.40 * body * (0.82 + 0.18 * (1.0 - dx * dx)), 0.2 * arms);
  const double band = std::abs(x - l.mid);
  d += 0.10 * Smooth((0.06 - band) / 0.02 + 0.5) * Smooth((0.52 - y) / 0.05 + 0.5);  // mediastinum
  d += 0.09 * Smooth((0.03 - band) / 0.008 + 0.5) * (0.8 + 0.2 * std::cos(2 * kPi * y / 0.05));
  d -= 0.10 * Smooth((0.011 - band) / 0.006 + 0.5) * Smooth((0.38 - y) / 0.02 + 0.5);  // trachea
  d += 0.06 * Ellipse(x, y, l.mid + 0.055, 0.33, 0.03, 0.025, 0.4);  // aortic knob
  d += 0.05 * Ellipse(x, y, l.heart_cx, l.heart_cy, l.heart_ax, l.heart_ay, 0.06);
  return d + Ribs(s, x, y) * body;
}

// Breast soft tissue over the lower lungs of female patients.
double Breasts(const Shapes& s, const PhantomSubject& subject, double x, double y) {
  if (subject.sex != 'F') return 0.0;
  return 0.06 * std::max(Ellipse(x, y, SideX(s, 0, 0.75), 0.67, 0.14, 0.11, 0.5),
                         Ellipse(x, y, SideX(s, 1, 0.75), 0.67, 0.14, 0.11, 0.5));
}

double Fluid(const Shapes& s, const Layout& l, int side, double x, double y) {
  const double f =
      std::clamp((std::abs(x - l.mid) - s.mediastinum) / (s.lateral - s.mediastinum), 0.0, 1.0);
  const double level = l.dome[side] - s.fluid_depth[side] - s.meniscus[side] * f * f;
  const double below = (y - level) / 0.04;
  return s.fluid_amp[side] * Smooth(below / 0.3 + 0.5) * (0.8 + 0.2 * std::min(1.0, below));
}

// Adds a Gaussian-profile segment or blob into `layer` (anatomical coordinates, mapped to
// image space by the same rigid transform as the pixels).
struct Canvas {
  int n;
  double cos_t, sin_t, sx, sy;
  void ToImage(double x, double y, double* px, double* py) const {
    const double ax = x - 0.5, ay = y - 0.5;
    *px = (cos_t * ax - sin_t * ay + 0.5 + sx) * n - 0.5;
    *py = (sin_t * ax + cos_t * ay + 0.5 + sy) * n - 0.5;
  }
  void ToAnatomy(int r, int c, double* x, double* y) const {
    const double ix = (c + 0.5) / n - 0.5 - sx, iy = (r + 0.5) / n - 0.5 - sy;
    *x = cos_t * ix + sin_t * iy + 0.5;
    *y = -sin_t * ix + cos_t * iy + 0.5;
  }
  void AddSegment(const Segment& g, std::vector<float>* layer) const {
    double x0, y0, x1, y1;
    ToImage(g.x0, g.y0, &x0, &y0);
    ToImage(g.x1, g.y1, &x1, &y1);
    const double w = g.width * n, reach = 2.5 * w;
    const int c0 = std::max(0, static_cast<int>(std::min(x0, x1) - reach));
    const int c1 = std::min(n - 1, static_cast<int>(std::max(x0, x1) + reach) + 1);
    const int r0 = std::max(0, static_cast<int>(std::min(y0, y1) - reach));
    const int r1 = std::min(n - 1, static_cast<int>(std::max(y0, y1) + reach) + 1);
    const double vx = x1 - x0, vy = y1 - y0, len2 = std::max(vx * vx + vy * vy, 1e-9);
    for (int r = r0; r <= r1; ++r) {
      for (int c = c0; c <= c1; ++c) {
        const double t = std::clamp(((c - x0) * vx + (r - y0) * vy) / len2, 0.0, 1.0);
        const double dx = c - x0 - t * vx, dy = r - y0 - t * vy;
        (*layer)[r * n + c] += g.amp * std::exp(-(dx * dx + dy * dy) / (2 * w * w));
      }
    }
  }
  void AddBlob(const Blob& b, std::vector<float>* layer) const {
    AddSegment({b.x, b.y, b.x, b.y, b.sigma, b.amp}, layer);
  }
};

// Overlays that only show inside the lungs (vessels and the findings' opacities).
std::vector<float> LungOverlay(const Shapes& s, const PhantomSubject& subject, const Canvas& cv) {
  std::vector<float> layer(static_cast<size_t>(cv.n) * cv.n, 0.0f);
  for (const Segment& g : s.vessels) cv.AddSegment(g, &layer);
  for (const Blob& b : s.parenchyma) cv.AddBlob(b, &layer);
  if (subject.findings[kCongestion]) {
    for (const Segment& g : s.congestion_vessels) cv.AddSegment(g, &layer);
    for (const Blob& b : s.hila) cv.AddBlob(b, &layer);
  }
  for (int side = 0; side < 2; ++side) {
    if (subject.findings[side == 0 ? kInfiltrateR : kInfiltrateL]) {
      for (const Blob& b : s.infiltrates[side]) cv.AddBlob(b, &layer);
    }
    if (subject.findings[side == 0 ? kAtelectasisR : kAtelectasisL]) {
      cv.AddSegment(s.plates[side], &layer);
    }
  }
  return layer;
}

}  // namespace

std::vector<uint16_t> RenderPhantom(const PhantomSubject& subject, const PhantomOptions& options,
                                    uint64_t image_seed) {
  const Shapes s = DrawShapes(subject, options, image_seed);
  const Layout l = MakeLayout(s, subject);
  const int n = options.size;
  const Canvas cv{n, std::cos(s.theta), std::sin(s.theta), s.shift_x, s.shift_y};
  const std::vector<float> overlay = LungOverlay(s, subject, cv);
  Rng noise(image_seed ^ 0x5DEECE66Dull);
  std::vector<uint16_t> out(static_cast<size_t>(n) * n);
  for (int r = 0; r < n; ++r) {
    for (int c = 0; c < n; ++c) {
      double x, y;
      cv.ToAnatomy(r, c, &x, &y);
      const int side = x < l.mid ? 0 : 1;
      const double heart = Ellipse(x, y, l.heart_cx, l.heart_cy, l.heart_ax, l.heart_ay, 0.06);
      const double lung = Lung(s, l, side, x, y) * (1.0 - heart);
      double inside = overlay[r * n + c];
      if (subject.findings[side == 0 ? kEffusionR : kEffusionL]) inside += Fluid(s, l, side, x, y);
      const double d =
          Tissue(s, l, x, y) + Breasts(s, subject, x, y) - lung * (0.28 - std::min(inside, 0.37));
      const double exposure = 1.0 + s.heel * (2.0 * y - 1.0);
      const double v =
          0.05 + 0.8 * (0.35 + s.gain * (d - 0.35)) * exposure + options.noise * noise.Normal();
      out[r * n + c] = static_cast<uint16_t>(std::lround(4095.0 * std::clamp(v, 0.0, 1.0)));
    }
  }
  return out;
}

absl::Status ValidatePhantomOptions(const PhantomOptions& o) {
  auto bad = [](const std::string& what) { return absl::InvalidArgumentError(what); };
  if (o.count < 1) return bad(absl::StrCat("count must be >= 1, got ", o.count));
  if (o.size < 32 || o.size > 4096)
    return bad(absl::StrCat("size must be in 32..4096, got ", o.size));
  if (!(o.noise >= 0 && o.noise <= 1))
    return bad(absl::StrCat("noise must be in [0, 1], got ", o.noise));
  if (!(o.contrast > 0 && o.contrast <= 10)) {
    return bad(absl::StrCat("contrast must be in (0, 10], got ", o.contrast));
  }
  if (!(o.finding_strength > 0 && o.finding_strength <= 2)) {
    return bad(absl::StrCat("finding_strength must be in (0, 2], got ", o.finding_strength));
  }
  if (!(o.variation >= 0 && o.variation <= 3)) {
    return bad(absl::StrCat("variation must be in [0, 3], got ", o.variation));
  }
  if (!(o.label_noise >= 0 && o.label_noise < 0.5)) {
    return bad(absl::StrCat("label_noise must be in [0, 0.5), got ", o.label_noise));
  }
  for (int i = 0; i < kNumPhantomLabels; ++i) {
    if (!(o.prevalence[i] >= 0 && o.prevalence[i] <= 1)) {
      return bad(absl::StrCat("prevalence of ", kPhantomLabels[i], " must be in [0, 1]"));
    }
  }
  if (!(o.male_fraction >= 0 && o.male_fraction <= 1))
    return bad("male_fraction must be in [0, 1]");
  if (o.min_age < 0 || o.max_age > 120 || o.min_age > o.max_age) {
    return bad(absl::StrCat("age range ", o.min_age, "..", o.max_age, " is not within 0..120"));
  }
  if (o.photometric != "MONOCHROME2" && o.photometric != "MONOCHROME1") {
    return bad(
        absl::StrCat("photometric must be MONOCHROME1 or MONOCHROME2, got '", o.photometric, "'"));
  }
  if (o.site_name.empty() || o.site_name.size() > 48)
    return bad("site_name must have 1..48 characters");
  for (size_t i = 0; i < o.labels_to_write.size(); ++i) {
    const std::string& name = o.labels_to_write[i];
    if (std::find(kPhantomLabels.begin(), kPhantomLabels.end(), name) == kPhantomLabels.end()) {
      return bad(absl::StrCat("unknown label '", name,
                              "' (known: ", absl::StrJoin(kPhantomLabels, ","), ")"));
    }
    if (std::find(o.labels_to_write.begin(), o.labels_to_write.begin() + i, name) !=
        o.labels_to_write.begin() + i) {
      return bad(absl::StrCat("label '", name, "' listed twice"));
    }
  }
  return absl::OkStatus();
}

namespace {

// A display window from the 1st..99th percentile of the non-background pixels.
void ComputeWindow(const std::vector<uint16_t>& pixels, double* center, double* width) {
  std::vector<int> histogram(4096, 0);
  int total = 0;
  for (uint16_t v : pixels) {
    if (v > 300) {
      ++histogram[v];
      ++total;
    }
  }
  int lo = 0, hi = 4095, seen = 0;
  for (int v = 0; v < 4096; ++v) {
    seen += histogram[v];
    if (seen <= total / 100) lo = v;
    if (seen < total - total / 100) hi = v + 1;
  }
  if (hi <= lo) hi = lo + 1;
  *center = std::round(0.5 * (lo + hi));
  *width = std::max(16.0, std::round(1.15 * (hi - lo)));
}

absl::Status WritePhantomDicom(const std::vector<uint16_t>& pixels, const PhantomSubject& subject,
                               const PhantomOptions& options, const std::string& path,
                               const std::string& sop_uid, const std::string& study_uid) {
  const bool invert = options.photometric == "MONOCHROME1";
  std::vector<uint16_t> stored = pixels;
  if (invert) {
    for (uint16_t& v : stored) v = static_cast<uint16_t>(4095 - v);
  }
  double center, width;
  ComputeWindow(pixels, &center, &width);
  if (invert) center = 4095 - center;
  DcmFileFormat file;
  DcmDataset* ds = file.getDataset();
  const std::string size = std::to_string(options.size);
  RETURN_IF_ERROR(PutAll(ds, {{DCM_SOPClassUID, UID_DigitalXRayImageStorageForPresentation},
                              {DCM_SOPInstanceUID, sop_uid},
                              {DCM_StudyInstanceUID, study_uid},
                              {DCM_SeriesInstanceUID, NewUid()},
                              {DCM_Modality, "DX"},
                              {DCM_PresentationIntentType, "FOR PRESENTATION"},
                              {DCM_ImageType, "ORIGINAL\\PRIMARY"},
                              {DCM_BodyPartExamined, "CHEST"},
                              {DCM_ViewPosition, "PA"},
                              {DCM_InstitutionName, options.site_name},
                              {DCM_PatientID, subject.patient_id},
                              {DCM_PatientName, "Phantom^" + subject.patient_id},
                              {DCM_PatientSex, std::string(1, subject.sex)},
                              {DCM_PatientAge, absl::StrFormat("%03dY", subject.age_years)},
                              {DCM_StudyDate, "20240101"},
                              {DCM_SeriesNumber, "1"},
                              {DCM_InstanceNumber, "1"},
                              {DCM_SamplesPerPixel, "1"},
                              {DCM_PhotometricInterpretation, options.photometric},
                              {DCM_Rows, size},
                              {DCM_Columns, size},
                              {DCM_BitsAllocated, "16"},
                              {DCM_BitsStored, "12"},
                              {DCM_HighBit, "11"},
                              {DCM_PixelRepresentation, "0"},
                              {DCM_WindowCenter, absl::StrCat(center)},
                              {DCM_WindowWidth, absl::StrCat(width)},
                              {DCM_RescaleIntercept, "0"},
                              {DCM_RescaleSlope, "1"},
                              {DCM_RescaleType, "US"}}));
  return SaveWithPixels(file, stored, path);
}

std::vector<std::string> ColumnsToWrite(const PhantomOptions& options) {
  if (!options.labels_to_write.empty()) return options.labels_to_write;
  return std::vector<std::string>(kPhantomLabels.begin(), kPhantomLabels.end());
}

// The demographics of patient number `index`.
PhantomSubject DrawPatient(Rng& rng, const PhantomOptions& options, int index) {
  PhantomSubject subject;
  subject.patient_id = absl::StrFormat("%s-P%06d", options.site_name, index);
  subject.sex = rng.Uniform() < options.male_fraction ? 'M' : 'F';
  subject.age_years =
      options.min_age + static_cast<int>(rng.Uniform() * (options.max_age - options.min_age + 1));
  subject.age_years = std::min(subject.age_years, options.max_age);
  return subject;
}

}  // namespace

absl::Status WritePhantomDataset(const PhantomOptions& options, const std::string& out_dir,
                                 PhantomSummary* summary) {
  RETURN_IF_ERROR(ValidatePhantomOptions(options));
  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", out_dir, ": ", ec.message()));
  const std::vector<std::string> columns = ColumnsToWrite(options);
  std::string csv = absl::StrCat("key,", absl::StrJoin(columns, ","), "\n");
  PhantomSummary counts;
  Rng rng(options.seed);
  Rng flips(options.seed ^ 0xA5A5F00DC0FFEEull);  // its own stream: the pixels do not depend on it
  PhantomSubject subject;
  std::string study_uid;
  for (int i = 0; i < options.count; ++i) {
    if (i == 0 || rng.Uniform() >= 0.2) {  // about one patient in five gets a follow-up image
      subject = DrawPatient(rng, options, counts.patients++);
      counts.males += subject.sex == 'M';
    }
    study_uid = NewUid();
    for (int k = 0; k < kNumPhantomLabels; ++k) {
      subject.findings[k] = rng.Uniform() < options.prevalence[k];
      counts.positives[k] += subject.findings[k];
    }
    const std::string sop_uid = NewUid();
    const std::string path = absl::StrFormat("%s/img_%06d.dcm", out_dir, i);
    RETURN_IF_ERROR(WritePhantomDicom(RenderPhantom(subject, options, rng.Next()), subject, options,
                                      path, sop_uid, study_uid));
    csv += sop_uid;
    for (const std::string& name : columns) {
      const int k =
          std::find(kPhantomLabels.begin(), kPhantomLabels.end(), name) - kPhantomLabels.begin();
      const bool flip = options.label_noise > 0 && flips.Uniform() < options.label_noise;
      counts.label_flips += flip;
      csv += subject.findings[k] != flip ? ",1" : ",0";
    }
    csv += "\n";
    ++counts.images;
  }
  std::ofstream out(out_dir + "/labels.csv", std::ios::trunc);
  out << csv;
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", out_dir, "/labels.csv"));
  if (summary != nullptr) *summary = counts;
  return absl::OkStatus();
}

}  // namespace fl
