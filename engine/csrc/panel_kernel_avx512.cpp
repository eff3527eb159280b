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

// Walks panels [p_begin, p_end) of an [n]-output weight and, within each,
// the 16-row blocks of `rows`: every block reuses the panel while it is in
// L1/L2. `block.template run<R>(m0, p, nvalid)` multiplies rows m0..m0+R by
// panel p (nvalid of its 16 outputs are real).
template <typename Block>
void each_block(long rows, long n, long p_begin, long p_end, const Block& block) {
  for (long p = p_begin; p < p_end; p++) {
    long left = n - p * kNr;
    int nvalid = left < kNr ? static_cast<int>(left) : kNr;
    for (long m0 = 0; m0 < rows; m0 += 16) {
      long mr = rows - m0 < 16 ? rows - m0 : 16;
      switch (mr) {
#define STEWARD_MR(R)                         \
  case R:                                     \
    block.template run<R>(m0, p, nvalid); \
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

// f32 x (transposed, [K][rows]) times f32 or bf16 (widened) panels.
template <bool Bf16>
struct WidenBlock {
  const float* xt;
  long rows, k_len, n;
  const void* packed;
  float* y;
  template <int R>
  void run(long m0, long p, int nvalid) const {
    const long at = p * k_len * kNr;
    const void* panel = Bf16 ? static_cast<const void*>(static_cast<const uint16_t*>(packed) + at)
                             : static_cast<const void*>(static_cast<const float*>(packed) + at);
    micro<R, Bf16>(xt + m0, rows, panel, k_len, y + m0 * n + p * kNr, n, nvalid);
  }
};

// bf16 weights times bf16 activations on CPUs with AVX-512 BF16 (checked at
// run time by the caller): VDPBF16PS multiplies two bf16 pairs per f32 lane
// and adds both products to the lane, so one instruction does the work of
// two widen-and-FMA steps. The products of two bf16 values are exact in
// f32, as in the widening kernel; only the order of the f32 additions
// differs. xt2 [ceil(K/2)][ldx] holds, for each pair of inputs (2kp, 2kp+1)
// and each row, the row's two bf16 activations in one 32-bit word (low half
// 2kp), zero-padded past K. The panel keeps its [K][16] layout: a 64-byte
// load takes rows 2kp and 2kp+1, and one permute interleaves them into the
// (w[2kp][j], w[2kp+1][j]) pairs the instruction wants.
#define STEWARD_BF16DP __attribute__((target("avx512bf16")))

alignas(64) const uint16_t kPairIdx[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,  21, 6,  22, 7,  23,
                                           8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};

STEWARD_BF16DP inline __m512 dp_step(__m512 acc, const uint32_t* x, __m512i w) {
  return _mm512_dpbf16_ps(acc, (__m512bh)_mm512_set1_epi32(static_cast<int>(*x)), (__m512bh)w);
}

template <int Mr>
STEWARD_BF16DP void micro_dp(const uint32_t* xt2, long ldx, const uint16_t* panel, long k_len, float* y, long ldy,
                             int nvalid) {
  const __m512i idx = _mm512_load_si512(kPairIdx);
  __m512 acc[Mr];
  __m512 acc2[Mr];
#pragma GCC unroll 16
  for (int m = 0; m < Mr; m++) {
    acc[m] = _mm512_setzero_ps();
    acc2[m] = _mm512_setzero_ps();
  }
  const long pairs = k_len / 2;
  long kp = 0;
  if constexpr (Mr < 4) {
    // Few rows: two independent accumulator sets hide the latency.
    for (; kp + 1 < pairs; kp += 2) {
      __m512i w0 = _mm512_permutexvar_epi16(idx, _mm512_loadu_si512(panel + kp * 2 * kNr));
      __m512i w1 = _mm512_permutexvar_epi16(idx, _mm512_loadu_si512(panel + (kp + 1) * 2 * kNr));
#pragma GCC unroll 16
      for (int m = 0; m < Mr; m++) {
        acc[m] = dp_step(acc[m], xt2 + kp * ldx + m, w0);
        acc2[m] = dp_step(acc2[m], xt2 + (kp + 1) * ldx + m, w1);
      }
    }
  }
  for (; kp < pairs; kp++) {
    __m512i w = _mm512_permutexvar_epi16(idx, _mm512_loadu_si512(panel + kp * 2 * kNr));
#pragma GCC unroll 16
    for (int m = 0; m < Mr; m++) acc[m] = dp_step(acc[m], xt2 + kp * ldx + m, w);
  }
  if (k_len & 1) {
    // The last input alone: its row, paired with zeros (the activations'
    // high halves are zero there too).
    __m512i w = _mm512_permutexvar_epi16(idx, _mm512_maskz_loadu_epi16(0xFFFFu, panel + pairs * 2 * kNr));
#pragma GCC unroll 16
    for (int m = 0; m < Mr; m++) acc[m] = dp_step(acc[m], xt2 + pairs * ldx + m, w);
  }
  __mmask16 mask = nvalid >= kNr ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << nvalid) - 1);
#pragma GCC unroll 16
  for (int m = 0; m < Mr; m++) _mm512_mask_storeu_ps(y + m * ldy, mask, _mm512_add_ps(acc[m], acc2[m]));
}

// bf16 pairs of x (as for micro_dp, [ceil(K/2)][rows]) times bf16 panels.
struct DotBlock {
  const uint32_t* xt2;
  long rows, k_len, n;
  const uint16_t* packed;
  float* y;
  template <int R>
  STEWARD_BF16DP void run(long m0, long p, int nvalid) const {
    micro_dp<R>(xt2 + m0, rows, packed + p * k_len * kNr, k_len, y + m0 * n + p * kNr, n, nvalid);
  }
};

// Paged decode attention, read in place: K and V rows are found through the
// decode group's head-major row index ([B][kv_heads][lmax] into the cache's
// [kv_heads * slots][hd] rows) instead of being gathered into a padded copy.
// hd is a multiple of 16 (checked by the caller).
inline float dot16n(const float* a, const float* b, long hd) {
  __m512 acc = _mm512_mul_ps(_mm512_loadu_ps(a), _mm512_loadu_ps(b));
  for (long d = 16; d < hd; d += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + d), _mm512_loadu_ps(b + d), acc);
  return _mm512_reduce_add_ps(acc);
}

}  // namespace

extern "C" {

// scores[g][t] = q[g] . K[rows[t]] for one (sequence, KV head): q [groups][hd],
// rows [lmax], scores [groups][lmax].
void steward_paged_scores_f32(const float* q, long groups, long hd, const float* kc, const int64_t* rows,
                              long lmax, float* scores) {
  for (long t = 0; t < lmax; t++) {
    const float* k = kc + rows[t] * hd;
    for (long g = 0; g < groups; g++) scores[g * lmax + t] = dot16n(q + g * hd, k, hd);
  }
}

// out[g] = sum_t probs[g][t] * V[rows[t]] for one (sequence, KV head); zero
// probabilities (padding) are skipped, so a padding row is never read.
void steward_paged_pv_f32(const float* probs, long groups, long hd, const float* vc, const int64_t* rows,
                          long lmax, float* out) {
  for (long g = 0; g < groups; g++) {
    for (long d = 0; d < hd; d += 16) _mm512_storeu_ps(out + g * hd + d, _mm512_setzero_ps());
  }
  for (long t = 0; t < lmax; t++) {
    const float* v = vc + rows[t] * hd;
    for (long g = 0; g < groups; g++) {
      const float p = probs[g * lmax + t];
      if (p == 0.0f) continue;
      const __m512 pv = _mm512_set1_ps(p);
      float* o = out + g * hd;
      for (long d = 0; d < hd; d += 16)
        _mm512_storeu_ps(o + d, _mm512_fmadd_ps(pv, _mm512_loadu_ps(v + d), _mm512_loadu_ps(o + d)));
    }
  }
}

// y [rows, n] (f32, row stride n) for panels [p_begin, p_end); xt [k_len][rows] f32.
void steward_panel_kernel_f32(const float* xt, long rows, long k_len, const float* packed, long n,
                              long p_begin, long p_end, float* y) {
  each_block(rows, n, p_begin, p_end, WidenBlock<false>{xt, rows, k_len, n, packed, y});
}

void steward_panel_kernel_bf16(const float* xt, long rows, long k_len, const uint16_t* packed, long n,
                               long p_begin, long p_end, float* y) {
  each_block(rows, n, p_begin, p_end, WidenBlock<true>{xt, rows, k_len, n, packed, y});
}

// bf16 weights and activations, VDPBF16PS (AVX-512 BF16 only); xt2 as for
// micro_dp, row stride `rows`.
void steward_panel_kernel_bf16dp(const uint32_t* xt2, long rows, long k_len, const uint16_t* packed, long n,
                                 long p_begin, long p_end, float* y) {
  each_block(rows, n, p_begin, p_end, DotBlock{xt2, rows, k_len, n, packed, y});
}

}  // extern "C"
