"""A fused CPU kernel for spikingjelly's multi-step LIF neuron (same maths, one pass over memory).

spikingjelly 2.0 runs its LIF on CPU as a Python loop of ~10 tensor ops per time step, forward and
backward; on a 2-core CPU those memory-bound passes cost more than the convolutions. This module compiles
(once, cached by torch in ~/.cache/torch_extensions) a C++ kernel that does each step in one pass over
memory, and :class:`FusedLIFNode` uses it in place of spikingjelly's loop when it can:

- same state update as ``spikingjelly.activation_based.neuron.LIFNode`` with a hard reset
  (decay_input or not), the same surrogate gradients (the 7 built-in ones, by spikingjelly's own ids), and
  the same ``detach_reset`` semantics. Tests check spikes are identical and gradients equal within 1e-6;
- without autograd (eval under no_grad / inference_mode) a forward-only kernel runs: it keeps no charged
  potential for a backward pass and reads a static input (the same at every step) once, not T times;
- the kernels run over the input's own memory order (:func:`memory_order`), so channels_last sequences
  stay channels_last (see :mod:`spikect.model.inference`);
- anything else (CUDA, store_v_seq, soft reset, custom surrogates, no C++ compiler) falls back to
  spikingjelly, so results never depend on whether the kernel could be built. ``SPIKECT_FUSED_LIF=0``
  turns it off.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

import torch
from spikingjelly.activation_based import neuron

log = logging.getLogger(__name__)

_CPP = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <vector>

static inline float sg_grad(float x, float a, int64_t id) {
  switch (id) {
    case 0: { float s = 1.f / (1.f + std::exp(-a * x)); return (1.f - s) * s * a; }
    case 1: { float z = x * (float)(M_PI / 2.0) * a; return (a / 2.f) / (1.f + z * z); }
    case 2: { float g = a - a * a * std::fabs(x); return g > 0.f ? g : 0.f; }
    case 3: return (a / 2.f) * std::exp(-a * std::fabs(x));
    case 4: { float z = 1.f / a + std::fabs(x); return 1.f / (2.f * a * z * z); }
    case 5: { float z = 1.f + std::fabs(x); return a / (z * z); }
    default: { float z = a * x; return (a / std::sqrt((float)M_PI)) * std::exp(-z * z); }
  }
}

// One neuron's step, as spikingjelly's charge + fire + hard reset (bit-identical: the reset
// sp * r + (1 - sp) * h of spikingjelly equals this select for finite values). decay_input is a template
// parameter so that each inner loop is branch-free and vectorises.
template <bool DECAY>
static inline float charge(float v, float x, float k, float r) {
  return DECAY ? v + (x - (v - r)) * k : v - (v - r) * k + x;
}

// x: [T, N] -> (spikes [T, N], charged potential h [T, N], final v [N]); v0: [N]
template <bool DECAY>
static void lif_forward_impl(const float* xp, const float* v0p, float* sp, float* hp, float* vp, int64_t T,
                             int64_t N, float k, float th, float r) {
  at::parallel_for(0, N, 8192, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) vp[i] = v0p[i];
    for (int64_t t = 0; t < T; ++t) {
      const float* xt = xp + t * N; float* st = sp + t * N; float* ht = hp + t * N;
      for (int64_t i = b; i < e; ++i) {
        const float hh = charge<DECAY>(vp[i], xt[i], k, r);
        const bool fire = hh >= th;
        ht[i] = hh; st[i] = fire ? 1.f : 0.f;
        vp[i] = fire ? r : hh;
      }
    }
  });
}

std::vector<torch::Tensor> lif_forward(torch::Tensor x, torch::Tensor v0, double tau, bool decay_input,
                                       double v_threshold, double v_reset) {
  const int64_t T = x.size(0), N = x.numel() / T;
  auto s = torch::empty_like(x), h = torch::empty_like(x), vT = torch::empty_like(v0);
  const float k = (float)(1.0 / tau), th = (float)v_threshold, r = (float)v_reset;
  (decay_input ? lif_forward_impl<true> : lif_forward_impl<false>)(
      x.data_ptr<float>(), v0.data_ptr<float>(), s.data_ptr<float>(), h.data_ptr<float>(),
      vT.data_ptr<float>(), T, N, k, th, r);
  return {s, h, vT};
}

// Inference: no h kept for a backward pass (a third less memory traffic). x: [T, N], or [N] when the input
// is the same at every step (a static image: then it is read, not copied T times) -> (spikes, final v).
template <bool DECAY>
static void lif_infer_impl(const float* xp, int64_t x_step, const float* v0p, float* sp, float* vp, int64_t T,
                           int64_t N, float k, float th, float r) {
  at::parallel_for(0, N, 8192, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) vp[i] = v0p[i];
    for (int64_t t = 0; t < T; ++t) {
      const float* xt = xp + t * x_step; float* st = sp + t * N;
      for (int64_t i = b; i < e; ++i) {
        const float hh = charge<DECAY>(vp[i], xt[i], k, r);
        const bool fire = hh >= th;
        st[i] = fire ? 1.f : 0.f;
        vp[i] = fire ? r : hh;
      }
    }
  });
}

std::vector<torch::Tensor> lif_infer(torch::Tensor x, torch::Tensor v0, int64_t T, double tau,
                                     bool decay_input, double v_threshold, double v_reset) {
  const int64_t N = v0.numel();
  const int64_t x_step = x.dim() == 1 ? 0 : N;
  auto s = torch::empty({T, N}, x.options()), vT = torch::empty_like(v0);
  const float k = (float)(1.0 / tau), th = (float)v_threshold, r = (float)v_reset;
  (decay_input ? lif_infer_impl<true> : lif_infer_impl<false>)(
      x.data_ptr<float>(), x_step, v0.data_ptr<float>(), s.data_ptr<float>(), vT.data_ptr<float>(), T, N, k,
      th, r);
  return {s, vT};
}

// grad wrt x [T, N] and wrt v0 [N], from grad wrt spikes gs [T, N] and wrt final v gv [N]
std::vector<torch::Tensor> lif_backward(torch::Tensor gs, torch::Tensor gv, torch::Tensor h, double tau,
                                        bool decay_input, double v_threshold, double v_reset,
                                        bool detach_reset, double alpha, int64_t sg_id) {
  const int64_t T = h.size(0), N = h.numel() / T;
  auto gx = torch::empty_like(h), g0 = torch::empty_like(gv);
  const float* gsp = gs.data_ptr<float>(); const float* gvp = gv.data_ptr<float>();
  const float* hp = h.data_ptr<float>(); float* gxp = gx.data_ptr<float>(); float* cp = g0.data_ptr<float>();
  const float k = (float)(1.0 / tau), th = (float)v_threshold, r = (float)v_reset, a = (float)alpha;
  at::parallel_for(0, N, 8192, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) cp[i] = gvp[i];  // carry = dL/dv[t]
    for (int64_t t = T - 1; t >= 0; --t) {
      const float* ht = hp + t * N; const float* gst = gsp + t * N; float* gxt = gxp + t * N;
      for (int64_t i = b; i < e; ++i) {
        const float hh = ht[i];
        const float sg = sg_grad(hh - th, a, sg_id);
        float reset_grad = hh >= th ? 0.f : 1.f;
        if (!detach_reset) reset_grad += (r - hh) * sg;
        const float gh = gst[i] * sg + cp[i] * reset_grad;
        gxt[i] = decay_input ? gh * k : gh;
        cp[i] = gh - gh * k;
      }
    }
  });
  return {gx, g0};
}
"""

_lock = threading.Lock()
_ext: Any = None
_tried = False


def _extension() -> Any:
    """The compiled kernel, or None when it cannot be built here (then spikingjelly's loop is used)."""
    global _ext, _tried
    if _tried:
        return _ext
    with _lock:
        if _tried:
            return _ext
        _tried = True
        if os.environ.get("SPIKECT_FUSED_LIF", "1") == "0":
            return None
        try:
            from torch.utils.cpp_extension import load_inline

            # the venv's ninja (a dependency) when the venv is not on PATH
            bindir = os.path.dirname(sys.executable)
            os.environ["PATH"] = os.environ.get("PATH", "") + os.pathsep + bindir
            _ext = load_inline(
                name="spikect_fused_lif_v2",
                cpp_sources=_CPP,
                functions=["lif_forward", "lif_backward", "lif_infer"],
                extra_cflags=["-O3"],
                verbose=False,
            )
        except Exception as exc:  # no compiler, no ninja, read-only cache: fall back, never fail
            log.warning("fused LIF kernel unavailable (%s); using spikingjelly's CPU loop", exc)
            _ext = None
    return _ext


class _FusedLIF(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, v0, tau, decay_input, v_threshold, v_reset, detach_reset, alpha, sg_id):  # noqa: ANN001
        shape = x.shape
        x2 = x.reshape(shape[0], -1).contiguous()
        s, h, v_final = _ext.lif_forward(
            x2, v0.reshape(-1).contiguous(), tau, decay_input, v_threshold, v_reset
        )
        ctx.save_for_backward(h)
        ctx.params = (tau, decay_input, v_threshold, v_reset, detach_reset, alpha, sg_id)
        ctx.shape = shape
        return s.reshape(shape), v_final.reshape(shape[1:])

    @staticmethod
    def backward(ctx, grad_s, grad_v):  # noqa: ANN001
        (h,) = ctx.saved_tensors
        tau, decay_input, v_threshold, v_reset, detach_reset, alpha, sg_id = ctx.params
        gs = grad_s.reshape(h.shape).contiguous().float()
        gv = torch.zeros(h.shape[1], dtype=h.dtype) if grad_v is None else grad_v.reshape(-1).contiguous()
        gx, g0 = _ext.lif_backward(
            gs, gv, h, tau, decay_input, v_threshold, v_reset, detach_reset, alpha, sg_id
        )
        return gx.reshape(ctx.shape), g0.reshape(ctx.shape[1:]), None, None, None, None, None, None, None


def _surrogate_id(fn: Any) -> tuple[int, float] | None:
    try:
        from spikingjelly._ops.surrogate import _surrogate_spec  # the ids its own kernels use

        return _surrogate_spec(fn)
    except Exception:
        return None


class FusedLIFNode(neuron.LIFNode):
    """spikingjelly's ``LIFNode`` (multi-step) with the fused CPU kernel when it applies."""

    def multi_step_forward(self, x_seq: torch.Tensor, *args: torch.Tensor, **kwargs: object) -> torch.Tensor:
        spec = _surrogate_id(self.surrogate_function)
        usable = (
            not args
            and x_seq.device.type == "cpu"
            and x_seq.dtype == torch.float32
            and self.v_reset is not None
            and not self.store_v_seq
            and spec is not None
            and _extension() is not None
        )
        if not usable:
            return super().multi_step_forward(x_seq, *args, **kwargs)
        # The kernel is elementwise over [T, N]: run it over the input's own memory order (e.g. channels_last
        # steps) so that no layout copy is needed before it, nor after it for the next convolution.
        perm = memory_order(x_seq)
        back = [perm.index(d) for d in range(len(perm))]
        step_perm = [d - 1 for d in perm[1:]]
        xp = x_seq.permute(perm)
        v = self.v
        v0 = (
            v.to(torch.float32).expand(x_seq.shape[1:]).permute(step_perm)
            if isinstance(v, torch.Tensor)
            else torch.full(xp.shape[1:], float(v), dtype=torch.float32)
        )
        sg_id, alpha = spec
        if torch.is_grad_enabled() and (xp.requires_grad or v0.requires_grad):
            spikes, v_final = _FusedLIF.apply(
                xp,
                v0,
                float(self.tau),
                bool(self.decay_input),
                float(self.v_threshold),
                float(self.v_reset),
                bool(self.detach_reset),
                float(alpha),
                int(sg_id),
            )
        else:  # nothing to differentiate: the kernel that keeps no h for a backward pass
            spikes, v_final = _infer(xp, v0, float(self.tau), bool(self.decay_input), self)
        self.v = v_final.permute([back[d + 1] - 1 for d in range(len(step_perm))])
        return spikes.permute(back)


def _infer(
    xp: torch.Tensor, v0: torch.Tensor, tau: float, decay_input: bool, node: neuron.LIFNode
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward without autograd (eval, validation, diagnose): the kernel that keeps no h. A sequence
    expanded over T from one step (a static input) is passed as that one step, not copied T times."""
    t = xp.shape[0]
    static = xp.stride(0) == 0 and xp[0].is_contiguous()
    x = xp[0].reshape(-1) if static else xp.reshape(t, -1).contiguous()
    spikes, v_final = _ext.lif_infer(
        x, v0.reshape(-1).contiguous(), t, tau, decay_input, float(node.v_threshold), float(node.v_reset)
    )
    return spikes.reshape(xp.shape), v_final.reshape(xp.shape[1:])


def memory_order(x: torch.Tensor) -> list[int]:
    """T first, then the other dims from the largest stride to the smallest (stable for ties): the order in
    which a step of ``x`` lies in memory. Identity for a contiguous or T-expanded NCHW sequence."""
    rest = sorted(range(1, x.dim()), key=lambda d: -x.stride(d))
    return [0, *rest]
