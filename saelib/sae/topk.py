"""TopK SAE with the AuxK dead-latent loss (Gao et al. 2024), as the original runs trained it.

``pre = (x − b_dec) W_enc + b_enc``, ``f = TopK_k(ReLU(pre))``, ``x̂ = f W_dec + b_dec``.

Speed: the encoder forward is one bf16 matmul (AMX under autocast) followed by ``topk``; everything
after it touches only the k active latents per token. Two backward implementations, equal up to
float rounding (``TopKConfig.backward_impl``):

- ``"sparse"``: the decoder and all weight gradients are gather/scatter-adds over the B·k active
  (token, latent) pairs (``embedding_bag`` kernels, fp32): O(B·k·d) work, no (B, F) tensor.
- ``"dense"``: the gradients are bf16 matmuls against dense (B, F) latents — faster once k/F is
  large enough that the B·k·d random row accesses cost more than the AMX matmuls.
- ``"auto"`` (default): where bf16 matmuls are fast (CUDA, AVX-512/AMX CPUs), sparse when
  ``k ≤ d_sae/64``, the crossover measured on an AMX CPU with ``benchmarks/train_step.py`` (equal
  speed at 640×5120, k = 88; dense 1.1x faster at 2304×18432, k = 320; sparse 1.3x faster at
  640×5120, k = 28). Where they are not (an AVX2-only CPU runs in fp32) always sparse: the dense
  path's four fp32 matmuls cost more than the gathers (640×5120, k = 89 on 2 AVX2 cores: 365 ms
  sparse against 761 ms dense per step).

In both, ``∂b_dec`` from the encoder is ``−W_enc Σ_b ∂pre_b`` (one matrix-vector product).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as Fn
from torch import Tensor

from ..devices import bf16_matmul_is_fast
from .base import BaseSAE, SAEConfig, SAEOutput, compute_dtype


@dataclass
class TopKConfig(SAEConfig):
    """TopK SAE: exactly ``k`` latents active per token."""

    k: int = 32
    """Active latents per token."""
    aux_k: int | None = None
    """Dead latents used by the AuxK reconstruction of the residual; ``None`` → ``d_in // 2``."""
    aux_coef: float = 1 / 32
    """Weight of the AuxK term in the loss."""
    aux_normalize: bool = True
    """Divide the AuxK squared error by the residual's variance (OpenAI's reference implementation)."""
    backward_impl: str = "auto"
    """``"sparse"`` (gather/scatter over active latents), ``"dense"`` (bf16 matmuls) or ``"auto"``
    (sparse when ``k ≤ d_sae/64`` or when the device has no fast bf16 matmul); same results up to
    float rounding."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= int(self.k) <= int(self.d_sae):
            raise ValueError(f"k must be in [1, d_sae={self.d_sae}], got {self.k}")
        if self.backward_impl not in ("auto", "sparse", "dense"):
            raise ValueError(f"backward_impl must be 'auto', 'sparse' or 'dense', got {self.backward_impl!r}")
        if self.aux_k is not None and int(self.aux_k) < 1:
            raise ValueError(f"aux_k must be >= 1 or None, got {self.aux_k}")

    def sparse_backward_on(self, device_type: str = "cpu") -> bool:
        """Whether the sparse implementation is used on a device of this type (``"cpu"``, ``"cuda"``)."""
        if self.backward_impl == "auto":
            return auto_sparse_rule(int(self.k), int(self.d_sae), bf16_matmul_is_fast(device_type))
        return self.backward_impl == "sparse"

    @property
    def sparse_backward(self) -> bool:
        """Whether the sparse implementation is used on the CPU (see :meth:`sparse_backward_on`)."""
        return self.sparse_backward_on("cpu")

    @property
    def resolved_aux_k(self) -> int:
        """``aux_k`` with the default ``d_in // 2`` filled in."""
        return int(self.aux_k) if self.aux_k is not None else max(1, self.d_in // 2)


def auto_sparse_rule(k: int, d_sae: int, fast_bf16_matmul: bool) -> bool:
    """``backward_impl="auto"``: sparse when ``k ≤ d_sae/64``, or always without fast bf16 matmuls."""
    return (not fast_bf16_matmul) or k * 64 <= d_sae


def fast_topk(pre_BF: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """``(values, indices)`` of the k largest entries per row (unsorted), like ``torch.topk``.

    For k ≥ 64 it first takes the max of each of the F/4 strided blocks ``{j, j + F/4, ...}``,
    keeps the k blocks with the largest maxima and runs ``topk`` on their 4k members. Exact: an
    entry outside those blocks has at least k larger block maxima above it. ~1.5x faster than
    ``torch.topk`` on (2048, 5120) at k = 88 and (2048, 18432) at k = 320 on this CPU.
    """
    B, F = pre_BF.shape
    S = 4
    if k < 64 or F % S != 0 or F // S < k:
        return pre_BF.topk(k, dim=1, sorted=False)
    G = F // S
    _, blocks_BK = pre_BF.view(B, S, G).amax(1).topk(k, dim=1, sorted=False)
    cand_BC = (blocks_BK[:, None, :] + torch.arange(0, F, G, device=pre_BF.device)[None, :, None]).reshape(B, S * k)
    val_BK, j_BK = pre_BF.gather(1, cand_BC).topk(k, dim=1, sorted=False)
    return val_BK, cand_BC.gather(1, j_BK)  # small (B, 4k) tensors: gather is fine here


def _rows(idx_BK: Tensor) -> Tensor:
    return torch.arange(idx_BK.shape[0], device=idx_BK.device)[:, None].expand_as(idx_BK)


class Pick(torch.autograd.Function):
    """``pre_BF[b, idx_BK[b, k]]`` (indices distinct within a row). The backward writes the
    gradient with ``index_put_``, ~6x faster than the ``scatter_`` behind ``gather``'s backward
    for bf16 on CPU."""

    @staticmethod
    def forward(ctx: Any, pre_BF: Tensor, idx_BK: Tensor) -> Tensor:
        ctx.save_for_backward(idx_BK)
        ctx.shape, ctx.dtype = pre_BF.shape, pre_BF.dtype
        return pre_BF[_rows(idx_BK), idx_BK]

    @staticmethod
    def backward(ctx: Any, g_BK: Tensor):
        (idx_BK,) = ctx.saved_tensors
        grad = torch.zeros(ctx.shape, dtype=ctx.dtype, device=g_BK.device).index_put_((_rows(idx_BK), idx_BK), g_BK.to(ctx.dtype))
        return grad, None


def pick(pre_BF: Tensor, idx_BK: Tensor) -> Tensor:
    """Differentiable ``pre_BF[b, idx_BK[b, k]]`` (distinct indices per row)."""
    return Pick.apply(pre_BF, idx_BK)


class Bags:
    """Flattened ``embedding_bag`` bookkeeping for a fixed-size code ``idx_BK`` (bag b = token b)."""

    def __init__(self, idx_BK: Tensor):
        B, K = idx_BK.shape
        self.B, self.K = B, K
        self.indices = idx_BK.reshape(-1)
        dev = idx_BK.device
        self.offsets = torch.arange(0, B * K, K, dtype=self.indices.dtype, device=dev)
        self.offset2bag = torch.arange(B, dtype=self.indices.dtype, device=dev).repeat_interleave(K)
        self.bag_size = torch.full((B,), K, dtype=self.indices.dtype, device=dev)
        self.max_indices = torch.zeros(0, dtype=self.indices.dtype, device=dev)

    def rows_sum(self, W_FD: Tensor, w_BK: Tensor) -> Tensor:
        """``out_b = Σ_k w_bk · W[idx_bk]`` → (B, D)."""
        return Fn.embedding_bag(self.indices, W_FD, self.offsets, mode="sum", per_sample_weights=w_BK.reshape(-1))

    def rows_grad(self, g_BD: Tensor, w_BK: Tensor, n_rows: int) -> Tensor:
        """``G[i] = Σ_{(b,k): idx_bk = i} w_bk · g_b`` → (n_rows, D): the weight gradient of ``rows_sum``."""
        return torch.ops.aten._embedding_bag_dense_backward(
            g_BD.contiguous(), self.indices, self.offset2bag, self.bag_size, self.max_indices, n_rows, False, 0,
            w_BK.reshape(-1).contiguous(), -1)

    def rows_dot(self, g_BD: Tensor, W_FD: Tensor) -> Tensor:
        """``⟨g_b, W[idx_bk]⟩`` → (B, K): the per-sample-weight gradient of ``rows_sum``."""
        out = torch.ops.aten._embedding_bag_per_sample_weights_backward(
            g_BD.contiguous(), W_FD, self.indices, self.offsets, self.offset2bag, 0, -1)
        return out.reshape(self.B, self.K)


class GatherDecodeSparseGrad(torch.autograd.Function):
    """``Σ_k val_bk · W_dec[idx_bk]`` in fp32 with an O(B·k·d) backward (no (B, F) tensor)."""

    @staticmethod
    def forward(ctx: Any, val_BK: Tensor, idx_BK: Tensor, W_dec_FD: Tensor) -> Tensor:
        bags = Bags(idx_BK)
        w_BK = val_BK.float()
        ctx.save_for_backward(w_BK, W_dec_FD)
        ctx.bags = bags
        ctx.val_dtype = val_BK.dtype
        return bags.rows_sum(W_dec_FD.float(), w_BK)

    @staticmethod
    def backward(ctx: Any, grad_out_BD: Tensor):
        w_BK, W_dec_FD = ctx.saved_tensors
        bags: Bags = ctx.bags
        g_BD = grad_out_BD.float()
        grad_val = grad_W = None
        if ctx.needs_input_grad[0]:
            grad_val = bags.rows_dot(g_BD, W_dec_FD.float()).to(ctx.val_dtype)
        if ctx.needs_input_grad[2]:
            grad_W = bags.rows_grad(g_BD, w_BK, W_dec_FD.shape[0]).to(W_dec_FD.dtype)
        return grad_val, None, grad_W


class GatherEncode(torch.autograd.Function):
    """Differentiable ``pre[b, idx_bk]`` given the (no-grad) values ``pre_BK`` already computed.

    Backward touches only the gathered entries: ``∂W_enc[:, i] = Σ g_bk (x_b − b_dec)`` over
    ``idx_bk = i``, ``∂b_enc = Σ g`` per latent, ``∂b_dec = −W_enc ∂b_enc``.
    """

    @staticmethod
    def forward(ctx: Any, x_BD: Tensor, W_enc_DF: Tensor, b_enc_F: Tensor, b_dec_D: Tensor, idx_BK: Tensor,
                pre_BK: Tensor) -> Tensor:
        ctx.save_for_backward(x_BD, W_enc_DF, b_dec_D, idx_BK)
        return pre_BK.float().clone()

    @staticmethod
    def backward(ctx: Any, g_BK: Tensor):
        x_BD, W_enc_DF, b_dec_D, idx_BK = ctx.saved_tensors
        g_BK = g_BK.float()
        F = W_enc_DF.shape[1]
        grad_x = grad_W = grad_benc = grad_bdec = None
        bags = Bags(idx_BK)
        if ctx.needs_input_grad[1]:
            xc_BD = x_BD.float() - b_dec_D.float()
            grad_W = bags.rows_grad(xc_BD, g_BK, F).T.to(W_enc_DF.dtype)
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            gsum_F = torch.zeros(F, dtype=torch.float32, device=g_BK.device).index_add_(0, bags.indices, g_BK.reshape(-1))
            if ctx.needs_input_grad[2]:
                grad_benc = gsum_F.to(W_enc_DF.dtype)
            if ctx.needs_input_grad[3]:
                grad_bdec = -(W_enc_DF.float() @ gsum_F).to(b_dec_D.dtype)
        if ctx.needs_input_grad[0]:
            grad_x = bags.rows_sum(W_enc_DF.float().T.contiguous(), g_BK).to(x_BD.dtype)
        return grad_x, grad_W, grad_benc, grad_bdec, None, None


class GatherEncodeExact(torch.autograd.Function):
    """Second, fp32 route to the chosen pre-activations ``pre[b, idx_bk]`` for terms other than the
    reconstruction (co-activation penalties, their L1 term) on the dense backward.

    Forward returns ``pre_BK`` (already computed, no graph) in fp32. Backward keeps the term's
    gradient apart from the MSE gradient until it reaches the fp32 parameters, so a gradient many
    orders of magnitude below the MSE's is not rounded away by a bf16 sum: ``∂b_enc`` and ``∂b_dec``
    are fp32 scatter-adds over the B·k entries; ``∂W_enc = xcᵀ G`` with ``G`` the (B, F) scatter of
    the gradient, one matmul in the compute dtype (bf16 under autocast: each entry of *this term's*
    gradient carries bf16's 2⁻⁹ relative error, which a cosine ≥ 0.99 test bounds).
    """

    @staticmethod
    def forward(ctx: Any, x_BD: Tensor, W_enc_DF: Tensor, b_enc_F: Tensor, b_dec_D: Tensor, idx_BK: Tensor,
                pre_BK: Tensor, cd: torch.dtype) -> Tensor:
        ctx.save_for_backward(x_BD, W_enc_DF, b_dec_D, idx_BK)
        ctx.cd = cd
        return pre_BK.float().clone()

    @staticmethod
    def backward(ctx: Any, g_BK: Tensor):
        x_BD, W_enc_DF, b_dec_D, idx_BK = ctx.saved_tensors
        g_BK = g_BK.float()
        B, F = idx_BK.shape[0], W_enc_DF.shape[1]
        grad_W = grad_benc = grad_bdec = None
        if ctx.needs_input_grad[1]:
            xc_BD = (x_BD.to(b_dec_D.dtype) - b_dec_D).to(ctx.cd)
            G_BF = torch.zeros(B, F, dtype=ctx.cd, device=g_BK.device)
            G_BF.index_put_((_rows(idx_BK), idx_BK), g_BK.to(ctx.cd))
            grad_W = torch.empty_like(W_enc_DF).copy_(xc_BD.T.contiguous() @ G_BF)
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            gsum_F = torch.zeros(F, dtype=torch.float32, device=g_BK.device)
            gsum_F.index_add_(0, idx_BK.reshape(-1), g_BK.reshape(-1))
            if ctx.needs_input_grad[2]:
                grad_benc = gsum_F.to(W_enc_DF.dtype)
            if ctx.needs_input_grad[3]:
                grad_bdec = -(W_enc_DF.float() @ gsum_F).to(b_dec_D.dtype)
        return None, grad_W, grad_benc, grad_bdec, None, None, None


class EncodePre(torch.autograd.Function):
    """``pre_BF = (x_BD − b_dec) W_enc + b_enc`` in dtype ``cd``, with a lean backward.

    Backward: ``∂W_enc = xcᵀ ∂pre`` (xcᵀ made contiguous: the fast AMX layout),
    ``∂b_enc = Σ_b ∂pre``, ``∂b_dec = −W_enc ∂b_enc`` (exact, no (B, d) matmul); ``∂x`` only if asked.
    """

    @staticmethod
    def forward(ctx: Any, x_BD: Tensor, W_enc_DF: Tensor, b_enc_F: Tensor, b_dec_D: Tensor, cd: torch.dtype) -> Tensor:
        xc_BD = (x_BD.to(b_dec_D.dtype) - b_dec_D).to(cd)
        W_c_DF = W_enc_DF.to(cd)
        pre_BF = torch.addmm(b_enc_F.to(cd), xc_BD, W_c_DF)
        ctx.save_for_backward(xc_BD, W_c_DF, W_enc_DF)
        ctx.x_dtype = x_BD.dtype
        return pre_BF

    @staticmethod
    def backward(ctx: Any, grad_pre_BF: Tensor):
        xc_BD, W_c_DF, W_enc_DF = ctx.saved_tensors
        g_BF = grad_pre_BF.to(xc_BD.dtype)
        grad_x = grad_W = grad_benc = grad_bdec = None
        if ctx.needs_input_grad[1]:
            # fastest AMX layout, then one converting copy into the parameter's memory layout
            grad_W = torch.empty_like(W_enc_DF).copy_(xc_BD.T.contiguous() @ g_BF)
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            gsum_F = g_BF.sum(0).float()  # fp32 accumulation inside; avoids an fp32 copy of g
            if ctx.needs_input_grad[2]:
                grad_benc = gsum_F.to(W_enc_DF.dtype)
            if ctx.needs_input_grad[3]:
                grad_bdec = -(W_enc_DF.float() @ gsum_F).to(W_enc_DF.dtype)
        if ctx.needs_input_grad[0]:
            grad_x = (g_BF @ W_c_DF.T).to(ctx.x_dtype)
        return grad_x, grad_W, grad_benc, grad_bdec, None


class GatherDecodeDenseGrad(torch.autograd.Function):
    """``out_BD = Σ_k val_BK[b, k] · W_dec[idx_BK[b, k]]`` (no bias) in dtype ``cd``.

    Forward gathers only the active decoder rows (``embedding_bag``). Backward:
    ``∂val = (∂out W_decᵀ)[b, idx]`` and ``∂W_dec = fᵀ ∂out`` with the dense latents rebuilt
    from (idx, val) — dense bf16 matmuls beat gather/scatter-add kernels on this CPU.
    """

    @staticmethod
    def forward(ctx: Any, val_BK: Tensor, idx_BK: Tensor, W_dec_FD: Tensor, cd: torch.dtype) -> Tensor:
        W_c_FD = W_dec_FD.to(cd)
        val_c = val_BK.to(cd)
        out_BD = Fn.embedding_bag(idx_BK, W_c_FD, per_sample_weights=val_c, mode="sum")
        ctx.save_for_backward(val_c, idx_BK, W_c_FD)
        ctx.val_dtype = val_BK.dtype
        ctx.W_dtype = W_dec_FD.dtype
        return out_BD

    @staticmethod
    def backward(ctx: Any, grad_out_BD: Tensor):
        val_c, idx_BK, W_c_FD = ctx.saved_tensors
        g_BD = grad_out_BD.to(W_c_FD.dtype)
        grad_val = grad_W = None
        if ctx.needs_input_grad[0]:
            grad_val = (g_BD @ W_c_FD.T)[_rows(idx_BK), idx_BK].to(ctx.val_dtype)
        if ctx.needs_input_grad[2]:
            B, F = idx_BK.shape[0], W_c_FD.shape[0]
            f_BF = torch.zeros(B, F, dtype=val_c.dtype, device=val_c.device).index_put_((_rows(idx_BK), idx_BK), val_c)
            grad_W = torch.empty(F, g_BD.shape[1], dtype=ctx.W_dtype, device=g_BD.device).copy_((g_BD.T.contiguous() @ f_BF).T)
        return grad_val, None, grad_W, None


def sparse_decode(val_BK: Tensor, idx_BK: Tensor, W_dec_FD: Tensor, *, sparse_backward: bool = True) -> Tensor:
    """Decoder product of a sparse code (no bias), float32 result.

    ``sparse_backward``: fp32 gather forward and O(B·k·d) backward; else a bf16 (under autocast)
    gather forward with dense-matmul backward.
    """
    if sparse_backward:
        return GatherDecodeSparseGrad.apply(val_BK, idx_BK, W_dec_FD)
    return GatherDecodeDenseGrad.apply(val_BK, idx_BK, W_dec_FD, compute_dtype(W_dec_FD.dtype, W_dec_FD.device.type)).float()


def densify(idx_BK: Tensor, val_BK: Tensor, d_sae: int) -> Tensor:
    """Dense ``f_BF`` from a sparse code (differentiable in ``val_BK``)."""
    zeros_BF = torch.zeros(idx_BK.shape[0], d_sae, dtype=val_BK.dtype, device=val_BK.device)
    return torch.index_put(zeros_BF, (_rows(idx_BK), idx_BK), val_BK)


def auxk_loss(sae: BaseSAE, pre_BF: Tensor, x_BD: Tensor, x_hat_BD: Tensor, dead_mask_F: Tensor | None,
              aux_k: int, normalize: bool, values_at: Callable[[Tensor, Tensor], Tensor] | None = None,
              sparse_backward: bool = False) -> Tensor:
    """AuxK: reconstruct the detached residual ``e = x − x̂`` from the top-``aux_k`` dead latents.

    ``ê = Σ ReLU(pre_i) W_dec,i`` over the (at most ``aux_k``) dead latents with the largest
    pre-activations, no bias; loss ``mean_b ‖e − ê‖²`` (divided by ``mean_b ‖e − ē‖²`` when
    ``normalize``). Zero when no latent is dead. ``values_at(idx_BK, pre_BK)`` makes the selected
    pre-activations differentiable (default: ``pre_BF`` carries the graph; gather from it).
    """
    if dead_mask_F is None:
        return x_hat_BD.new_zeros(())
    if dead_mask_F.shape != (sae.cfg.d_sae,) or dead_mask_F.dtype != torch.bool:
        raise ValueError(f"dead_mask_F must be a bool tensor of shape ({sae.cfg.d_sae},), got {dead_mask_F.dtype} {tuple(dead_mask_F.shape)}")
    dead_idx = dead_mask_F.nonzero().squeeze(1)
    n_dead = int(dead_idx.numel())
    if n_dead == 0:
        return x_hat_BD.new_zeros(())
    k_aux = min(aux_k, n_dead)
    if values_at is None:
        with torch.no_grad():
            _, a_j = pre_BF.index_select(1, dead_idx).topk(k_aux, dim=1, sorted=False)
        a_idx = dead_idx[a_j]
        a_val = pick(pre_BF, a_idx)
    else:
        with torch.no_grad():
            a_pre, a_j = pre_BF.index_select(1, dead_idx).topk(k_aux, dim=1, sorted=False)
        a_idx = dead_idx[a_j]
        a_val = values_at(a_idx, a_pre)
    e_hat_BD = sparse_decode(a_val.relu(), a_idx, sae.W_dec, sparse_backward=sparse_backward)
    e_BD = (x_BD.float() - x_hat_BD).detach()
    sse = (e_hat_BD - e_BD).pow(2).sum(-1).mean()
    if not normalize:
        return sse
    denom = (e_BD - e_BD.mean(0)).pow(2).sum(-1).mean()
    return torch.where(denom > 0, sse / denom.clamp_min(1e-30), torch.zeros_like(sse))


class TopKSAE(BaseSAE):
    """TopK SAE; ``forward`` returns the sparse code (``idx_BK``, ``val_BK``)."""

    arch = "topk"
    config_cls = TopKConfig
    saelens_architecture = "topk"
    cfg: TopKConfig

    def _encoder_latent_major(self) -> bool:
        return self.cfg.sparse_backward

    def _sparse_backward(self) -> bool:
        """The backward implementation for the device the weights are on."""
        return self.cfg.sparse_backward_on(self.W_enc.device.type)

    def _check_2d(self, x_BD: Tensor) -> Tensor:
        x_BD = self._check_input(x_BD)
        if x_BD.ndim != 2:
            raise ValueError(f"forward expects a (batch, {self.cfg.d_in}) tensor, got {tuple(x_BD.shape)}")
        return x_BD

    def _pre(self, x_BD: Tensor) -> Tensor:
        return EncodePre.apply(x_BD, self.W_enc, self.b_enc, self.b_dec, compute_dtype(self.W_enc.dtype, self.W_enc.device.type))

    def _values_at(self, x_BD: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
        return lambda idx_BK, pre_BK: GatherEncode.apply(x_BD, self.W_enc, self.b_enc, self.b_dec, idx_BK, pre_BK)

    def topk_code(self, x_BD: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(idx_BK, val_BK, pre_BF)`` with ``val = ReLU`` of the k largest pre-activations.

        Sparse implementation: ``pre_BF`` carries no graph; ``val_BK`` is differentiable (fp32).
        Dense implementation: ``val_BK`` is picked from the differentiable ``pre_BF`` (compute dtype).
        """
        idx_BK, val_BK, pre_BF, _ = self._code(x_BD)
        return idx_BK, val_BK, pre_BF

    def _code(self, x_BD: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(idx_BK, val_dec_BK, pre_BF, val_BK)``: ``val_dec_BK`` feeds the decoder, ``val_BK`` (fp32)
        any other loss term. The same tensor on the sparse backward (fp32 throughout); on the dense
        backward ``val_BK`` is the exact fp32 route of :class:`GatherEncodeExact` (equal values)."""
        if self._sparse_backward() and torch.is_grad_enabled():
            with torch.no_grad():
                pre_BF = self.pre_activations(x_BD)
                pre_BK, idx_BK = fast_topk(pre_BF, self.cfg.k)
            val_BK = self._values_at(x_BD)(idx_BK, pre_BK).relu()
            return idx_BK, val_BK, pre_BF, val_BK
        cd = compute_dtype(self.W_enc.dtype, self.W_enc.device.type)
        pre_BF = self._pre(x_BD)
        with torch.no_grad():
            pre_BK, idx_BK = fast_topk(pre_BF.detach(), self.cfg.k)
        val_dec_BK = pick(pre_BF, idx_BK).relu()
        if not torch.is_grad_enabled():
            return idx_BK, val_dec_BK, pre_BF, val_dec_BK.float()
        val_BK = GatherEncodeExact.apply(x_BD, self.W_enc, self.b_enc, self.b_dec, idx_BK, pre_BK, cd).relu()
        return idx_BK, val_dec_BK, pre_BF, val_BK

    def encode(self, x_BD: Tensor) -> Tensor:
        """Dense latents ``f`` (zeros off the top-k); any leading dims."""
        x = self._check_input(x_BD)
        shape = x.shape[:-1]
        idx_BK, val_BK, _ = self.topk_code(x.reshape(-1, self.cfg.d_in))
        return densify(idx_BK, val_BK, self.cfg.d_sae).reshape(*shape, self.cfg.d_sae)

    def forward(self, x_BD: Tensor, *, step: int | None = None, dead_mask_F: Tensor | None = None,
                dense_latents: bool = True) -> SAEOutput:
        """Reconstruction, code and losses ``{"mse", "auxk", "loss"}``.

        ``dead_mask_F`` (bool, F) switches on AuxK over those latents; ``dense_latents=False``
        skips building ``f_BF`` (the trainer's fast path when no penalty needs it). ``val_BK`` (and
        ``f_BF``) are fp32 on both backward implementations: a loss term on them (the co-activation
        penalty) reaches every parameter with an fp32 gradient, never rounded into the bf16 MSE one.
        """
        x_BD = self._check_2d(x_BD)
        sparse = self._sparse_backward()
        idx_BK, val_dec_BK, pre_BF, val_BK = self._code(x_BD)
        x_hat_BD = sparse_decode(val_dec_BK, idx_BK, self.W_dec, sparse_backward=sparse) + self.b_dec.float()
        mse = self.mse_loss(x_hat_BD, x_BD)
        auxk = auxk_loss(self, pre_BF, x_BD, x_hat_BD, dead_mask_F, self.cfg.resolved_aux_k, self.cfg.aux_normalize,
                         values_at=self._values_at(x_BD) if sparse else None, sparse_backward=sparse)
        losses = {"mse": mse, "auxk": auxk, "loss": mse + self.cfg.aux_coef * auxk}
        f_BF = densify(idx_BK, val_BK, self.cfg.d_sae) if dense_latents else None
        return SAEOutput(x_hat_BD, f_BF, idx_BK, val_BK, losses)

    def _saelens_extra_config(self) -> dict[str, Any]:
        return {"k": int(self.cfg.k), "rescale_acts_by_decoder_norm": False}
