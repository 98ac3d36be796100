// Fused TensorFlow CPU kernels for the two layers whose keras.ops form costs
// TensorFlow's graph executor one full pass over the activations per op:
// GroupSort2 (MaxMin of adjacent channel pairs) and ScaledL2NormPooling2D
// (channels_last). Each kernel makes one pass, forward and backward.
//
// Built and loaded at run time by keras_lipschitz/_tf_cpu_kernels.py, used
// only for training steps on the CPU outside XLA; every other path uses the
// keras.ops formulation, which these kernels match (see the tests).

#include <algorithm>
#include <cmath>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"

namespace keras_lipschitz {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

// Runs work(begin, end) over [0, total) on TensorFlow's intra-op threads.
template <typename Work>
void Parallel(OpKernelContext* ctx, int64_t total, int64_t cost, Work work) {
  auto* threads = ctx->device()->tensorflow_cpu_worker_threads();
  ::tensorflow::Shard(threads->num_threads, threads->workers, total, cost,
                      work);
}

// ------------------------------------------------------------ MaxMin pairs
// For each pair (a, b) of adjacent entries of the last axis, with
// r = max(a - b, 0): (a - r, b + r) = (min, max). This is the arithmetic of
// the keras.ops path (x + relu(x P)(-P^T)), so both give the same floats.

REGISTER_OP("KerasLipschitzMinMaxPairs")
    .Input("x: float")
    .Output("y: float")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(0));
      return ::tensorflow::OkStatus();
    });

REGISTER_OP("KerasLipschitzMinMaxPairsGrad")
    .Input("x: float")
    .Input("upstream: float")
    .Output("grad: float")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(0));
      return ::tensorflow::OkStatus();
    });

bool HasEvenLastAxis(const Tensor& x) {
  return x.dims() >= 1 && x.dim_size(x.dims() - 1) % 2 == 0;
}

#if defined(__SSE2__)
// Two pairs per vector: lanes (a, b, a', b').
inline __m128 SwapWithinPairs(__m128 v) {
  return _mm_shuffle_ps(v, v, _MM_SHUFFLE(2, 3, 0, 1));
}

// s (x - swapped x) with signs s = (+1, -1, +1, -1): a - b in both lanes
// of each pair, rounded exactly as the scalar a - b.
inline __m128 PairDifferences(__m128 x, __m128 signs) {
  return _mm_mul_ps(_mm_sub_ps(x, SwapWithinPairs(x)), signs);
}
#endif

// Pairs [begin, end). Branch-free: the comparison is random for real data.
// With SSE2, x - s r = (a - r, b + r): bit for bit the scalar formula.
void MinMaxPairs(const float* in, float* out, int64_t begin, int64_t end) {
  int64_t i = begin;
#if defined(__SSE2__)
  const __m128 signs = _mm_set_ps(-1.0f, 1.0f, -1.0f, 1.0f);
  const __m128 zero = _mm_setzero_ps();
  for (; i + 2 <= end; i += 2) {
    const __m128 x = _mm_loadu_ps(in + 2 * i);
    const __m128 r = _mm_max_ps(PairDifferences(x, signs), zero);
    _mm_storeu_ps(out + 2 * i, _mm_sub_ps(x, _mm_mul_ps(signs, r)));
  }
#endif
  for (; i < end; ++i) {
    const float a = in[2 * i], b = in[2 * i + 1];
    const float r = std::max(a - b, 0.0f);
    out[2 * i] = a - r;
    out[2 * i + 1] = b + r;
  }
}

void MinMaxPairsGrad(const float* in, const float* g, float* out,
                     int64_t begin, int64_t end) {
  int64_t i = begin;
#if defined(__SSE2__)
  const __m128 signs = _mm_set_ps(-1.0f, 1.0f, -1.0f, 1.0f);
  const __m128 zero = _mm_setzero_ps();
  for (; i + 2 <= end; i += 2) {
    const __m128 x = _mm_loadu_ps(in + 2 * i);
    const __m128 swap = _mm_cmpgt_ps(PairDifferences(x, signs), zero);
    const __m128 up = _mm_loadu_ps(g + 2 * i);
    _mm_storeu_ps(out + 2 * i, _mm_or_ps(_mm_and_ps(swap, SwapWithinPairs(up)),
                                         _mm_andnot_ps(swap, up)));
  }
#endif
  for (; i < end; ++i) {
    const bool swap = in[2 * i] - in[2 * i + 1] > 0.0f;
    const float g0 = g[2 * i], g1 = g[2 * i + 1];
    out[2 * i] = swap ? g1 : g0;
    out[2 * i + 1] = swap ? g0 : g1;
  }
}

class MinMaxPairsOp : public OpKernel {
 public:
  explicit MinMaxPairsOp(OpKernelConstruction* c) : OpKernel(c) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    OP_REQUIRES(ctx, HasEvenLastAxis(x),
                ::tensorflow::errors::InvalidArgument(
                    "KerasLipschitzMinMaxPairs needs an even last axis"));
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &y));
    const float* in = x.flat<float>().data();
    float* out = y->flat<float>().data();
    Parallel(ctx, x.NumElements() / 2, 4, [&](int64_t begin, int64_t end) {
      MinMaxPairs(in, out, begin, end);
    });
  }
};

// The Jacobian is the swap of the pair where a - b > 0, else the identity
// (ReLU's derivative is 0 at 0, as in the keras.ops path).
class MinMaxPairsGradOp : public OpKernel {
 public:
  explicit MinMaxPairsGradOp(OpKernelConstruction* c) : OpKernel(c) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& upstream = ctx->input(1);
    OP_REQUIRES(ctx, HasEvenLastAxis(x) && x.shape() == upstream.shape(),
                ::tensorflow::errors::InvalidArgument(
                    "KerasLipschitzMinMaxPairsGrad needs x and upstream of "
                    "one shape with an even last axis"));
    Tensor* grad = nullptr;
    // In place when TensorFlow no longer needs an input: each pair is read
    // before it is written.
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output(
                            {1, 0}, 0, x.shape(), &grad));
    const float* in = x.flat<float>().data();
    const float* g = upstream.flat<float>().data();
    float* out = grad->flat<float>().data();
    Parallel(ctx, x.NumElements() / 2, 4, [&](int64_t begin, int64_t end) {
      MinMaxPairsGrad(in, g, out, begin, end);
    });
  }
};

REGISTER_KERNEL_BUILDER(
    Name("KerasLipschitzMinMaxPairs").Device(::tensorflow::DEVICE_CPU),
    MinMaxPairsOp);
REGISTER_KERNEL_BUILDER(
    Name("KerasLipschitzMinMaxPairsGrad").Device(::tensorflow::DEVICE_CPU),
    MinMaxPairsGradOp);

// ------------------------------------------------------ L2-norm pooling
// NHWC, non-overlapping pool_h x pool_w windows, trailing rows and columns
// dropped: y = sqrt(sum_window x^2 + epsilon), dy/dx = x / y per window.

REGISTER_OP("KerasLipschitzL2NormPool")
    .Input("x: float")
    .Output("y: float")
    .Attr("pool_h: int >= 1")
    .Attr("pool_w: int >= 1")
    .Attr("epsilon: float")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle x;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &x));
      int pool_h, pool_w;
      TF_RETURN_IF_ERROR(c->GetAttr("pool_h", &pool_h));
      TF_RETURN_IF_ERROR(c->GetAttr("pool_w", &pool_w));
      DimensionHandle h, w;
      TF_RETURN_IF_ERROR(c->Divide(c->Dim(x, 1), pool_h, false, &h));
      TF_RETURN_IF_ERROR(c->Divide(c->Dim(x, 2), pool_w, false, &w));
      c->set_output(0, c->MakeShape({c->Dim(x, 0), h, w, c->Dim(x, 3)}));
      return ::tensorflow::OkStatus();
    });

REGISTER_OP("KerasLipschitzL2NormPoolGrad")
    .Input("x: float")
    .Input("y: float")
    .Input("upstream: float")
    .Output("grad: float")
    .Attr("pool_h: int >= 1")
    .Attr("pool_w: int >= 1")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(0));
      return ::tensorflow::OkStatus();
    });

struct PoolGeometry {
  int64_t batch, height, width, channels, out_height, out_width;
  int pool_h, pool_w;

  PoolGeometry(const Tensor& x, int ph, int pw)
      : batch(x.dim_size(0)),
        height(x.dim_size(1)),
        width(x.dim_size(2)),
        channels(x.dim_size(3)),
        out_height(x.dim_size(1) / ph),
        out_width(x.dim_size(2) / pw),
        pool_h(ph),
        pool_w(pw) {}

  // Offset of input pixel (n, row, col, 0).
  int64_t In(int64_t n, int64_t row, int64_t col) const {
    return ((n * height + row) * width + col) * channels;
  }
  // Offset of output pixel (n, i, j, 0).
  int64_t Out(int64_t n, int64_t i, int64_t j) const {
    return ((n * out_height + i) * out_width + j) * channels;
  }
};

class L2NormPoolOp : public OpKernel {
 public:
  explicit L2NormPoolOp(OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, c->GetAttr("pool_h", &pool_h_));
    OP_REQUIRES_OK(c, c->GetAttr("pool_w", &pool_w_));
    OP_REQUIRES_OK(c, c->GetAttr("epsilon", &epsilon_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    OP_REQUIRES(ctx, x.dims() == 4,
                ::tensorflow::errors::InvalidArgument(
                    "KerasLipschitzL2NormPool needs a 4D NHWC input"));
    const PoolGeometry s(x, pool_h_, pool_w_);
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            0,
                            TensorShape({s.batch, s.out_height, s.out_width,
                                         s.channels}),
                            &y));
    const float* in = x.flat<float>().data();
    float* out = y->flat<float>().data();
    const float epsilon = epsilon_;
    const int64_t cost = s.out_width * s.channels * pool_h_ * pool_w_ * 3;
    Parallel(ctx, s.batch * s.out_height, cost, [&](int64_t begin,
                                                     int64_t end) {
      const int64_t row_size = s.out_width * s.channels;
      for (int64_t r = begin; r < end; ++r) {
        const int64_t n = r / s.out_height, i = r % s.out_height;
        float* __restrict__ o = out + s.Out(n, i, 0);
        std::fill(o, o + row_size, 0.0f);
        // Window rows, then each window's pool_w * channels contiguous
        // inputs: unit-stride inner loops over the channels.
        for (int a = 0; a < pool_h_; ++a) {
          const float* __restrict__ row = in + s.In(n, i * pool_h_ + a, 0);
          for (int64_t j = 0; j < s.out_width; ++j) {
            float* __restrict__ oj = o + j * s.channels;
            for (int b = 0; b < pool_w_; ++b) {
              const float* __restrict__ p =
                  row + (j * pool_w_ + b) * s.channels;
              for (int64_t c = 0; c < s.channels; ++c) oj[c] += p[c] * p[c];
            }
          }
        }
        for (int64_t k = 0; k < row_size; ++k) {
          o[k] = std::sqrt(o[k] + epsilon);
        }
      }
    });
  }

 private:
  int pool_h_, pool_w_;
  float epsilon_;
};

class L2NormPoolGradOp : public OpKernel {
 public:
  explicit L2NormPoolGradOp(OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, c->GetAttr("pool_h", &pool_h_));
    OP_REQUIRES_OK(c, c->GetAttr("pool_w", &pool_w_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& y = ctx->input(1);
    const Tensor& upstream = ctx->input(2);
    OP_REQUIRES(ctx, x.dims() == 4 && y.shape() == upstream.shape(),
                ::tensorflow::errors::InvalidArgument(
                    "KerasLipschitzL2NormPoolGrad: bad input shapes"));
    const PoolGeometry s(x, pool_h_, pool_w_);
    Tensor* grad = nullptr;
    // In place of x when TensorFlow no longer needs it: each entry is read
    // before it is written.
    OP_REQUIRES_OK(
        ctx, ctx->forward_input_or_allocate_output({0}, 0, x.shape(), &grad));
    const float* in = x.flat<float>().data();
    const float* out = y.flat<float>().data();
    const float* g = upstream.flat<float>().data();
    float* dx = grad->flat<float>().data();
    const int64_t cost = s.out_width * s.channels * pool_h_ * pool_w_ * 3;
    Parallel(ctx, s.batch * s.out_height, cost, [&](int64_t begin,
                                                     int64_t end) {
      // g / y once per output, not once per window entry.
      std::vector<float> ratio(s.out_width * s.channels);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t n = r / s.out_height, i = r % s.out_height;
        const float* __restrict__ yo = out + s.Out(n, i, 0);
        const float* __restrict__ go = g + s.Out(n, i, 0);
        float* __restrict__ q = ratio.data();
        for (int64_t k = 0; k < s.out_width * s.channels; ++k) {
          q[k] = go[k] / yo[k];
        }
        for (int a = 0; a < pool_h_; ++a) {
          const int64_t start = s.In(n, i * pool_h_ + a, 0);
          // dr may be xr (in place): no restrict, no loop-carried reuse.
          const float* xr = in + start;
          float* dr = dx + start;
          for (int64_t j = 0; j < s.out_width; ++j) {
            const float* __restrict__ qj = q + j * s.channels;
            for (int b = 0; b < pool_w_; ++b) {
              const int64_t p = (j * pool_w_ + b) * s.channels;
#pragma GCC ivdep
              for (int64_t c = 0; c < s.channels; ++c) {
                dr[p + c] = xr[p + c] * qj[c];
              }
            }
          }
        }
        // Columns dropped by the valid pooling get no gradient.
        for (int a = 0; a < pool_h_; ++a) {
          const int64_t row = i * pool_h_ + a;
          const int64_t first = s.In(n, row, s.out_width * pool_w_);
          std::fill(dx + first, dx + s.In(n, row + 1, 0), 0.0f);
        }
      }
    });
    // Rows dropped by the valid pooling get no gradient.
    const int64_t kept_rows = s.out_height * pool_h_;
    if (kept_rows < s.height) {
      for (int64_t n = 0; n < s.batch; ++n) {
        std::fill(dx + s.In(n, kept_rows, 0), dx + s.In(n + 1, 0, 0), 0.0f);
      }
    }
  }

 private:
  int pool_h_, pool_w_;
};

REGISTER_KERNEL_BUILDER(
    Name("KerasLipschitzL2NormPool").Device(::tensorflow::DEVICE_CPU),
    L2NormPoolOp);
REGISTER_KERNEL_BUILDER(
    Name("KerasLipschitzL2NormPoolGrad").Device(::tensorflow::DEVICE_CPU),
    L2NormPoolGradOp);

}  // namespace keras_lipschitz
