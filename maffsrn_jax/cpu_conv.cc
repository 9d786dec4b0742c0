// MAFFSRN's convolution kernels for XLA:CPU with AVX-512, as XLA FFI handlers.
//
// XLA:CPU's own convolutions and matrix products run through Eigen with 256-bit vectors; on
// cores with AVX-512 these register-blocked loops do the 3x3 convolution's forward pass and
// both gradients, and the 1x1 convolution's kernel gradient (a long sum over pixels), in
// much less time. `cpu_conv.py` builds this file with the system C++ compiler and uses it
// only for float32 shapes whose channels fill whole 16-float registers.
//
// Layouts are row-major: x [N, H, W, C], kernel [3, 3, C, O] (HWIO), y [N, H, W, O].
//   MaffsrnConv3x3Forward(x, kernel) -> y        'same' 3x3 convolution, stride 1
//   MaffsrnConv3x3KernelGrad(x, dy)  -> dkernel  dkernel[i, j, c, o] =
//                                                  sum of x[n, h+i-1, w+j-1, c] dy[n, h, w, o]
//   MaffsrnPixelOuterSum(a, g)       -> [C, O]   sum over pixels of a[.., c] g[.., o] (the
//                                                  kernel gradient of a 1x1 convolution)
// The input gradient of the 3x3 convolution is the forward kernel applied to dy with the
// kernel rotated by 180 degrees and its channel axes swapped (done by the caller).
//
// Work is split into chunks (of image rows, or of pixels) that the calling thread and XLA's
// intra-op pool pull in turn. Each output element is summed in a fixed order, and kernel
// gradients are summed per fixed chunk and then over chunks in order, so results do not
// depend on the number of threads or on which thread ran which chunk.

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

#define MAFFSRN_AVX512 __attribute__((target("avx512f,fma")))

namespace {

constexpr int kLanes = 16;       // floats per 512-bit register
constexpr int kAccumulators = 24;  // of the 32 registers; the rest hold operands
constexpr int kMaxChannels = 4 * kLanes;

// A tile of R x OV accumulators: R rows of O = OV * 16 floats, O floats apart in memory.
template <int R, int OV>
using Tile = __m512[R][OV];

template <int R, int OV>
MAFFSRN_AVX512 inline void LoadTile(Tile<R, OV>& acc, const float* p) {
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < OV; ++v) acc[r][v] = _mm512_loadu_ps(p + (r * OV + v) * kLanes);
}

template <int R, int OV>
MAFFSRN_AVX512 inline void StoreTile(const Tile<R, OV>& acc, float* p) {
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < OV; ++v) _mm512_storeu_ps(p + (r * OV + v) * kLanes, acc[r][v]);
}

// acc[r][v] += s[r * stride] * w[v]: the rank-one update both kernels are made of, R
// broadcast scalars against OV vectors.
template <int R, int OV>
MAFFSRN_AVX512 inline void RankOneUpdate(Tile<R, OV>& acc, const float* s, int64_t stride,
                                         const __m512 (&w)[OV]) {
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r) {
    const __m512 b = _mm512_set1_ps(s[r * stride]);
#pragma GCC unroll 4
    for (int v = 0; v < OV; ++v) acc[r][v] = _mm512_fmadd_ps(b, w[v], acc[r][v]);
  }
}

template <int OV>
MAFFSRN_AVX512 inline void LoadVectors(__m512 (&w)[OV], const float* p) {
#pragma GCC unroll 4
  for (int v = 0; v < OV; ++v) w[v] = _mm512_loadu_ps(p + v * kLanes);
}

// Calls f(std::integral_constant<int, n>{}) for a run-time 1 <= n <= K: the narrower tile
// at the end of a row (or of the channels) gets a kernel instantiated for its size.
template <int K, typename F>
void WithConstant(int n, F&& f) {
  if constexpr (K >= 1) {
    if (n == K) return f(std::integral_constant<int, K>{});
    WithConstant<K - 1>(n, f);
  }
}

// Forward: P consecutive output pixels of one row, O = OV * 16 channels, as P * OV
// accumulators. `base` points at input pixel (row h - 1 + first tap row, column w0 - 1);
// pixels are C floats apart and rows `row_stride` floats apart. `taps` holds the kernel
// rows in use (2 at the top and bottom image rows, where the third is padding).
template <int P, int OV>
MAFFSRN_AVX512 void ForwardBlock(const float* base, int64_t row_stride, int rows,
                                 const float* taps, int C, float* out) {
  Tile<P, OV> acc;
#pragma GCC unroll 32
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 4
    for (int v = 0; v < OV; ++v) acc[p][v] = _mm512_setzero_ps();
  for (int i = 0; i < rows; ++i) {
    for (int j = 0; j < 3; ++j) {
      const float* xr = base + i * row_stride + j * C;
      const float* wr = taps + (i * 3 + j) * C * OV * kLanes;
      for (int c = 0; c < C; ++c) {
        __m512 w[OV];
        LoadVectors<OV>(w, wr + c * OV * kLanes);
        RankOneUpdate<P, OV>(acc, xr + c, C, w);
      }
    }
  }
  StoreTile<P, OV>(acc, out);
}

// Output rows [r0, r1) of the N * H rows, for C <= kMaxChannels input channels.
template <int OV>
MAFFSRN_AVX512 void ForwardRows(const float* x, const float* kernel, float* y, int64_t H,
                                int64_t W, int C, int64_t r0, int64_t r1) {
  constexpr int P = kAccumulators / OV;
  constexpr int O = OV * kLanes;
  alignas(64) float tmp[P * O];
  // On the stack, like every buffer a pool thread uses: a thread with its own malloc arena
  // would map (and page-fault in) fresh memory for each chunk.
  alignas(64) float scratch[(P + 2) * 3 * kMaxChannels];
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / H, h = r % H;
    const int first = h == 0 ? 1 : 0;
    const int rows = (h == H - 1 ? 2 : 3) - first;
    const float* taps = kernel + first * 3 * C * O;
    for (int64_t w0 = 0; w0 < W; w0 += P) {
      const int width = static_cast<int>(std::min<int64_t>(P, W - w0));
      const float* base;
      int64_t row_stride;
      if (w0 >= 1 && w0 + width + 1 <= W) {
        base = x + ((n * H + h - 1 + first) * W + w0 - 1) * C;
        row_stride = W * C;
      } else {
        // A block touching the left or right edge reads a zero-padded copy of its window.
        row_stride = static_cast<int64_t>(width + 2) * C;
        std::memset(scratch, 0, sizeof(float) * rows * row_stride);
        const int64_t c0 = std::max<int64_t>(0, w0 - 1), c1 = std::min(W, w0 + width + 1);
        for (int i = 0; i < rows; ++i) {
          const int64_t ih = h - 1 + first + i;
          std::memcpy(scratch + i * row_stride + (c0 - (w0 - 1)) * C,
                      x + ((n * H + ih) * W + c0) * C, sizeof(float) * (c1 - c0) * C);
        }
        base = scratch;
      }
      float* out = y + ((n * H + h) * W + w0) * O;
      if (width == P) {
        ForwardBlock<P, OV>(base, row_stride, rows, taps, C, out);
      } else {  // the narrower last block of a row, through `tmp`
        WithConstant<P - 1>(width, [&](auto k) {
          ForwardBlock<decltype(k)::value, OV>(base, row_stride, rows, taps, C, tmp);
        });
        std::memcpy(out, tmp, sizeof(float) * width * O);
      }
    }
  }
}

// Kernel gradient over `pixels` pixels for CB input channels: dk[c][o] += x[p][c] * dy[p][o],
// with CB * OV accumulators.
template <int CB, int OV>
MAFFSRN_AVX512 void KernelGradBlock(const float* xs, const float* dys, int64_t pixels, int C,
                                    float* dk) {
  Tile<CB, OV> acc;
  LoadTile<CB, OV>(acc, dk);
  for (int64_t p = 0; p < pixels; ++p) {
    __m512 g[OV];
    LoadVectors<OV>(g, dys + p * OV * kLanes);
    RankOneUpdate<CB, OV>(acc, xs + p * C, 1, g);
  }
  StoreTile<CB, OV>(acc, dk);
}

// All C input channels of KernelGradBlock: tiles of CB, then one narrower tile.
template <int OV>
MAFFSRN_AVX512 void KernelGradChannels(const float* xs, const float* dys, int64_t pixels,
                                       int C, float* dk) {
  constexpr int CB = kAccumulators / OV;
  constexpr int O = OV * kLanes;
  int c0 = 0;
  for (; c0 + CB <= C; c0 += CB) KernelGradBlock<CB, OV>(xs + c0, dys, pixels, C, dk + c0 * O);
  if (c0 < C) {
    WithConstant<CB - 1>(C - c0, [&](auto k) {
      KernelGradBlock<decltype(k)::value, OV>(xs + c0, dys, pixels, C, dk + c0 * O);
    });
  }
}

// Adds the kernel gradient of output rows [r0, r1) into dk [3, 3, C, O].
template <int OV>
MAFFSRN_AVX512 void KernelGradRows(const float* x, const float* dy, float* dk, int64_t H,
                                   int64_t W, int C, int64_t r0, int64_t r1) {
  constexpr int O = OV * kLanes;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / H, h = r % H;
    for (int i = 0; i < 3; ++i) {
      const int64_t ih = h + i - 1;
      if (ih < 0 || ih >= H) continue;
      for (int j = 0; j < 3; ++j) {
        // Output columns whose tap j falls inside the image.
        const int64_t lo = std::max<int64_t>(0, 1 - j), hi = std::min(W, W + 1 - j);
        if (hi <= lo) continue;
        const float* xs = x + ((n * H + ih) * W + lo + j - 1) * C;
        const float* dys = dy + ((n * H + h) * W + lo) * O;
        KernelGradChannels<OV>(xs, dys, hi - lo, C, dk + (i * 3 + j) * C * O);
      }
    }
  }
}

// Runs body(chunk) for chunk in [0, chunks) on the calling thread and on up to
// `pool.num_threads()` pool threads, and returns when every chunk is done. The caller
// takes chunks too, so it never waits on a task that has not started.
template <typename Body>
void ParallelFor(ffi::ThreadPool& pool, int64_t chunks, Body body) {
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
  };
  auto state = std::make_shared<State>();
  auto work = [state, chunks, body]() {
    for (int64_t c; (c = state->next.fetch_add(1)) < chunks;) {
      body(c);
      state->done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads() - 1, chunks - 1);
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule(decltype(work)(work));
  work();
  while (state->done.load(std::memory_order_acquire) < chunks) std::this_thread::yield();
}

// Rows per chunk for the forward pass: enough work per chunk to amortise scheduling.
int64_t RowsPerChunk(int64_t W, int C, int O) {
  const int64_t macs_per_row = W * 9 * C * O;
  return std::max<int64_t>(1, (1 << 21) / std::max<int64_t>(1, macs_per_row));
}

// Partial kernel gradients: a fixed number of chunks, so the sum order depends on the shape
// only (`cpu_conv.py` sizes the workspace result that holds them by the same rule). The
// workspace is an XLA buffer rather than a malloc here: a large allocation made on whichever
// thread calls the handler would move the process's heap high-water mark at random moments,
// and every step after that would page-fault its temporaries in again.
constexpr int64_t kGradChunks = 16;

int64_t GradChunks(int64_t units) { return std::max<int64_t>(1, std::min(units, kGradChunks)); }

// The workspace, zeroed.
float* PartialSums(ffi::ResultBuffer<ffi::F32>& workspace, int64_t n) {
  float* p = workspace->typed_data();
  std::fill_n(p, n, 0.0f);
  return p;
}

// out = the sum of `chunks` partials of `size` floats, added in order.
void SumPartials(const float* partial, int64_t chunks, int64_t size, float* out) {
  std::memcpy(out, partial, sizeof(float) * size);
  for (int64_t c = 1; c < chunks; ++c)
    for (int64_t e = 0; e < size; ++e) out[e] += partial[c * size + e];
}

// Shape checks. Python sizes every buffer, but a handler only touches memory after it has
// checked that each buffer it reads or writes has exactly the dimensions it assumes.

bool Is(ffi::Span<const int64_t> dims, std::initializer_list<int64_t> want) {
  return dims.size() == want.size() && std::equal(want.begin(), want.end(), dims.begin());
}

bool WholeRegisters(int64_t channels) {
  return channels % kLanes == 0 && channels >= kLanes && channels <= kMaxChannels;
}

ffi::Error Mismatch(const char* what) {
  return ffi::Error::InvalidArgument(std::string("maffsrn_cpu: ") + what);
}

// x [N, H, W, C] with 1 <= C <= kMaxChannels.
ffi::Error CheckImages(ffi::Span<const int64_t> x) {
  if (x.size() != 4 || x[3] < 1 || x[3] > kMaxChannels) {
    return Mismatch("x must be [N, H, W, C] with 1 to 64 channels");
  }
  return ffi::Error::Success();
}

// The workspace of a kernel gradient: one row of `size` floats per chunk of `units`.
ffi::Error CheckWorkspace(ffi::Span<const int64_t> workspace, int64_t units, int64_t size) {
  if (!Is(workspace, {GradChunks(units) * size})) return Mismatch("workspace size");
  return ffi::Error::Success();
}

template <typename F>
void DispatchOV(int O, F f) {
  switch (O / kLanes) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    default: f(std::integral_constant<int, 4>{}); break;  // O is checked to be 16 to 64
  }
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kernel,
                   ffi::ResultBuffer<ffi::F32> y) {
  const auto xd = x.dimensions(), kd = kernel.dimensions();
  if (ffi::Error e = CheckImages(xd); e.failure()) return e;
  const int64_t N = xd[0], H = xd[1], W = xd[2];
  if (kd.size() != 4 || !WholeRegisters(kd[3]) || !Is(kd, {3, 3, xd[3], kd[3]})) {
    return Mismatch("kernel must be [3, 3, C, O] with O of 16 to 64 in steps of 16");
  }
  const int C = static_cast<int>(xd[3]), O = static_cast<int>(kd[3]);
  if (!Is(y->dimensions(), {N, H, W, O})) return Mismatch("y must be [N, H, W, O]");
  const int64_t rows = N * H;
  if (rows == 0 || W == 0) return ffi::Error::Success();
  const int64_t step = RowsPerChunk(W, C, O);
  const int64_t chunks = (rows + step - 1) / step;
  const float* xp = x.typed_data();
  const float* kp = kernel.typed_data();
  float* yp = y->typed_data();
  DispatchOV(O, [&](auto ov) {
    constexpr int OV = decltype(ov)::value;
    ParallelFor(pool, chunks, [=](int64_t c) {
      ForwardRows<OV>(xp, kp, yp, H, W, C, c * step, std::min(rows, (c + 1) * step));
    });
  });
  return ffi::Error::Success();
}

// A kernel gradient of `size` floats summed over `units` rows or pixels: body(ov, u0, u1,
// partial) adds units [u0, u1) into one chunk's zeroed partial sum, and the chunks' sums are
// then added in order into `out`. The caller has checked the workspace's size.
template <typename Body>
void SumOverChunks(ffi::ThreadPool& pool, int O, int64_t units, int64_t size,
                   ffi::ResultBuffer<ffi::F32>& workspace, float* out, Body body) {
  const int64_t chunks = GradChunks(units);
  float* part = PartialSums(workspace, chunks * size);
  DispatchOV(O, [&](auto ov) {
    ParallelFor(pool, chunks, [=](int64_t c) {
      body(ov, units * c / chunks, units * (c + 1) / chunks, part + c * size);
    });
  });
  SumPartials(part, chunks, size, out);
}

ffi::Error KernelGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                      ffi::ResultBuffer<ffi::F32> dk,
                      ffi::ResultBuffer<ffi::F32> workspace) {
  const auto xd = x.dimensions(), gd = dy.dimensions(), kd = dk->dimensions();
  if (ffi::Error e = CheckImages(xd); e.failure()) return e;
  const int64_t N = xd[0], H = xd[1], W = xd[2];
  if (gd.size() != 4 || !WholeRegisters(gd[3]) || !Is(gd, {N, H, W, gd[3]})) {
    return Mismatch("dy must be [N, H, W, O] with O of 16 to 64 in steps of 16");
  }
  const int C = static_cast<int>(xd[3]), O = static_cast<int>(gd[3]);
  if (!Is(kd, {3, 3, C, O})) return Mismatch("dkernel must be [3, 3, C, O]");
  const int64_t size = 9 * static_cast<int64_t>(C) * O;
  if (ffi::Error e = CheckWorkspace(workspace->dimensions(), N * H, size); e.failure()) return e;
  const float* xp = x.typed_data();
  const float* gp = dy.typed_data();
  SumOverChunks(pool, O, N * H, size, workspace, dk->typed_data(),
                [=](auto ov, int64_t r0, int64_t r1, float* partial) {
                  KernelGradRows<decltype(ov)::value>(xp, gp, partial, H, W, C, r0, r1);
                });
  return ffi::Error::Success();
}

// sum over pixels of a[p, c] * g[p, o] for a [..., C] and g [..., O]: the kernel gradient
// of a 1x1 convolution, a.T @ g over flattened pixels.
ffi::Error PixelOuterSum(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> g,
                         ffi::ResultBuffer<ffi::F32> out,
                         ffi::ResultBuffer<ffi::F32> workspace) {
  const auto ad = a.dimensions(), gd = g.dimensions();
  if (ad.size() < 1 || ad.size() != gd.size() ||
      !std::equal(ad.begin(), ad.end() - 1, gd.begin())) {
    return Mismatch("a and g must be [..., C] and [..., O] over the same pixels");
  }
  // C is only a stride here; the bound keeps it an int and the partial sums small.
  if (ad.back() < 1 || ad.back() > (1 << 16)) return Mismatch("a must have 1 to 65536 channels");
  if (!WholeRegisters(gd.back())) return Mismatch("g must have 16 to 64 channels in steps of 16");
  const int C = static_cast<int>(ad.back()), O = static_cast<int>(gd.back());
  if (!Is(out->dimensions(), {C, O})) return Mismatch("the result must be [C, O]");
  int64_t pixels = 1;
  for (size_t i = 0; i + 1 < ad.size(); ++i) pixels *= ad[i];
  const int64_t size = static_cast<int64_t>(C) * O;
  if (ffi::Error e = CheckWorkspace(workspace->dimensions(), pixels, size); e.failure()) return e;
  const float* ap = a.typed_data();
  const float* gp = g.typed_data();
  SumOverChunks(pool, O, pixels, size, workspace, out->typed_data(),
                [=](auto ov, int64_t p0, int64_t p1, float* partial) {
                  KernelGradChannels<decltype(ov)::value>(ap + p0 * C, gp + p0 * O, p1 - p0, C,
                                                          partial);
                });
  return ffi::Error::Success();
}

}  // namespace

// Every handler takes XLA's thread pool and two float32 arrays; the kernel gradients also
// return their workspace of partial sums.
using F32 = ffi::Buffer<ffi::F32>;
auto TwoInputs() { return ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>().Arg<F32>(); }

XLA_FFI_DEFINE_HANDLER_SYMBOL(MaffsrnConv3x3Forward, Forward, TwoInputs().Ret<F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(MaffsrnConv3x3KernelGrad, KernelGrad,
                              TwoInputs().Ret<F32>().Ret<F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(MaffsrnPixelOuterSum, PixelOuterSum,
                              TwoInputs().Ret<F32>().Ret<F32>());

// Whether this CPU runs the AVX-512 code above (the Python side asks before registering).
extern "C" int MaffsrnConv3x3Supported() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
}
