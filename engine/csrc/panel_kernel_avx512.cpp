// The inner loops of the panel linear (see panel_linear.cpp), compiled with
// AVX-512 enabled for this file only. Called only after a runtime check that
// the CPU has AVX-512F/BW/VL. No C++ library header is included here: an
// inline function instantiated in this file with AVX-512 code could otherwise
// be the copy the linker keeps for the rest of the program, which must run on
// CPUs without AVX-512.
//
// Layout: a weight [N, K] is stored as ceil(N/16) panels, each [K][16]
// (16 consecutive output features per k, zero-padded past N). x arrives
// transposed, xt [K][M] (row stride ldx >= rows), so the values of one k for
// up to 16 rows sit in one cache line and are broadcast straight into the FMAs.
#include <immintrin.h>
#include <stdint.h>

namespace {

constexpr int kNr = 16;

template <bool Bf16>
inline __m512 load_panel_row(const void* panel, long k) {
  if constexpr (Bf16) {
    const uint16_t* p = static_cast<const uint16_t*>(panel) + k * kNr;
    __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    // bf16 -> f32: the 16 bits are the top half of the f32.
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
  } else {
    return _mm512_loadu_ps(static_cast<const float*>(panel) + k * kNr);
  }
}

// y[m][0..nvalid) = sum_k xt[k][m] * panel[k][0..16) for m < Mr.
template <int Mr, bool Bf16>
void micro(const float* xt, long ldx, const void* panel, long k_len, float* y, long ldy, int nvalid) {
  __m512 acc[Mr];
  __m512 acc2[Mr];
#pragma GCC unroll 16
  for (int m = 0; m < Mr; m++) {
    acc[m] = _mm512_setzero_ps();
    acc2[m] = _mm512_setzero_ps();
  }
  long k = 0;
  if constexpr (Mr < 4) {
    // Few rows: two independent accumulator sets hide the FMA latency.
    for (; k + 1 < k_len; k += 2) {
      __m512 w0 = load_panel_row<Bf16>(panel, k);
      __m512 w1 = load_panel_row<Bf16>(panel, k + 1);
#pragma GCC unroll 16
      for (int m = 0; m < Mr; m++) {
        acc[m] = _mm512_fmadd_ps(_mm512_set1_ps(xt[k * ldx + m]), w0, acc[m]);
        acc2[m] = _mm512_fmadd_ps(_mm512_set1_ps(xt[(k + 1) * ldx + m]), w1, acc2[m]);
      }
    }
  }
  for (; k < k_len; k++) {
    __m512 w = load_panel_row<Bf16>(panel, k);
#pragma GCC unroll 16
    for (int m = 0; m < Mr; m++) acc[m] = _mm512_fmadd_ps(_mm512_set1_ps(xt[k * ldx + m]), w, acc[m]);
  }
  __mmask16 mask = nvalid >= kNr ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << nvalid) - 1);
#pragma GCC unroll 16
  for (int m = 0; m < Mr; m++) _mm512_mask_storeu_ps(y + m * ldy, mask, _mm512_add_ps(acc[m], acc2[m]));
}

template <bool Bf16>
void panels(const float* xt, long rows, long k_len, const void* packed, long n, long p_begin, long p_end, float* y) {
  const long stride = k_len * kNr;
  for (long p = p_begin; p < p_end; p++) {
    const void* panel = Bf16 ? static_cast<const void*>(static_cast<const uint16_t*>(packed) + p * stride)
                             : static_cast<const void*>(static_cast<const float*>(packed) + p * stride);
    long left = n - p * kNr;
    int nvalid = left < kNr ? static_cast<int>(left) : kNr;
    // Every 16-row block reuses the panel while it is in L1/L2.
    for (long m0 = 0; m0 < rows; m0 += 16) {
      long mr = rows - m0 < 16 ? rows - m0 : 16;
      const float* xb = xt + m0;
      float* yb = y + m0 * n + p * kNr;
      switch (mr) {
#define STEWARD_MR(R) \
  case R:             \
    micro<R, Bf16>(xb, rows, panel, k_len, yb, n, nvalid); \
    break;
        STEWARD_MR(1) STEWARD_MR(2) STEWARD_MR(3) STEWARD_MR(4) STEWARD_MR(5) STEWARD_MR(6)
        STEWARD_MR(7) STEWARD_MR(8) STEWARD_MR(9) STEWARD_MR(10) STEWARD_MR(11) STEWARD_MR(12)
        STEWARD_MR(13) STEWARD_MR(14) STEWARD_MR(15) STEWARD_MR(16)
#undef STEWARD_MR
        default:
          break;
      }
    }
  }
}

}  // namespace

extern "C" {

// y [rows, n] (f32, row stride n) for panels [p_begin, p_end); xt [k_len][rows] f32.
void steward_panel_kernel_f32(const float* xt, long rows, long k_len, const float* packed, long n,
                              long p_begin, long p_end, float* y) {
  panels<false>(xt, rows, k_len, packed, n, p_begin, p_end, y);
}

void steward_panel_kernel_bf16(const float* xt, long rows, long k_len, const uint16_t* packed, long n,
                               long p_begin, long p_end, float* y) {
  panels<true>(xt, rows, k_len, packed, n, p_begin, p_end, y);
}

}  // extern "C"
