"""LoRA, BaLoRA and MC-dropout LoRA wrappers around a frozen ``nn.Linear`` (docs/method.md, eqs. 1–5, §11)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from mofbalora.adapters.noise import NoiseContext, per_graph_matmul
from mofbalora.backbones.base import pairwise_concat, pairwise_terms


def kl_multiplicative_gaussian(noise_alpha: torch.Tensor, prior_c: float) -> torch.Tensor:
    """KL(N(a, alpha a^2) || N(0, c a^2)) per element = ½[(alpha + 1)/c + log c − log alpha − 1] (eq. 5)."""
    return 0.5 * ((noise_alpha + 1.0) / prior_c + math.log(prior_c) - torch.log(noise_alpha) - 1.0)


#: Molchanov et al. (2017), eq. 14: the fitted constants of their log-uniform KL approximation
_LOG_UNIFORM_K = (0.63576, 1.87320, 1.48695)


def kl_log_uniform(noise_alpha: torch.Tensor) -> torch.Tensor:
    """KL(N(a, alpha a^2) || log-uniform) per element, Molchanov et al.'s (2017) approximation (eq. 5b):
    k1 − k1 σ(k2 + k3 log alpha) + ½ log(1 + 1/alpha). Decreasing in alpha, with no minimum at a
    finite alpha: only the data term stops the noise from growing."""
    k1, k2, k3 = _LOG_UNIFORM_K
    log_alpha = torch.log(noise_alpha)
    return k1 - k1 * torch.sigmoid(k2 + k3 * log_alpha) + 0.5 * F.softplus(-log_alpha)


class LoRALinear(nn.Module):
    """y = W0 x + s · B A x with W0 frozen, A [r, d] small random, B [k, r] zero (eq. 1).

    Shapes: input [..., d] -> output [..., k].
    """

    def __init__(self, base_layer: nn.Linear, *, rank: int, scaling: float, generator: torch.Generator) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.rank = rank
        self.scaling = scaling
        self.lora_A = nn.Parameter(torch.empty(rank, base_layer.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base_layer.out_features, rank))
        self.merged = False
        self.disabled = False
        self._unmerged_weight: torch.Tensor | None = None
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator) -> None:
        # PEFT's default: kaiming-uniform(a=sqrt(5)) for A, i.e. U(-1/sqrt(d), 1/sqrt(d)); zeros for B.
        bound = 1.0 / math.sqrt(self.base_layer.in_features)
        with torch.no_grad():
            self.lora_A.copy_(torch.rand(self.lora_A.shape, generator=generator) * 2 * bound - bound)
            self.lora_B.zero_()

    def delta_weight(self) -> torch.Tensor:
        """s · B A, [k, d]."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def original_weight(self) -> torch.Tensor:
        return self._unmerged_weight if self.merged else self.base_layer.weight

    def merge(self) -> None:
        """Fold s·BA into W0 after checking it is finite (mean mode then costs nothing)."""
        if self.merged:
            return
        with torch.no_grad():
            merged = self.base_layer.weight + self.delta_weight()
            if not torch.isfinite(merged).all():
                raise ValueError("merging would produce non-finite weights; adapter is broken")
            self._unmerged_weight = self.base_layer.weight.detach().clone()
            self.base_layer.weight.copy_(merged)
        self.merged = True

    def unmerge(self) -> None:
        """Restore W0 exactly (the copy taken at merge time)."""
        if not self.merged:
            return
        with torch.no_grad():
            self.base_layer.weight.copy_(self._unmerged_weight)
        self._unmerged_weight = None
        self.merged = False

    def _base(self, x: torch.Tensor) -> torch.Tensor:
        if self.disabled and self.merged:
            return F.linear(x, self._unmerged_weight, self.base_layer.bias)
        return self.base_layer(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._base(x)
        if self.disabled or self.merged:
            return out
        return out + self.scaling * F.linear(F.linear(x, self.lora_A), self.lora_B)

    def effective_weight(self) -> torch.Tensor:
        """The weight this layer applies in mean mode: W0 (disabled), W0 + s·B·A otherwise."""
        if self.disabled:
            return self.original_weight()
        return self.base_layer.weight if self.merged else self.base_layer.weight + self.delta_weight()

    def forward_pairwise(self, node: torch.Tensor, nbr_idx: torch.Tensor, edge: torch.Tensor, *,
                         copies: int = 1) -> torch.Tensor:
        """``self(cat[node_i, node_j, edge_ij])`` [N, M, k] by the split weight W0 + s·B·A
        (``backbones.base.pairwise_terms``), gradients included. Why: on the built rows the adapter
        is a second pass over the [N, M, 2F + E] tensor, which made a LoRA training step 1.4x a full
        fine-tuning step on 2 cores (benchmarks/results.json, 2026-12-01)."""
        return pairwise_terms(self.effective_weight(), self.base_layer.bias, node, nbr_idx, edge, copies=copies)


class StochasticLoRALinear(LoRALinear):
    """LoRA whose adapter is random at sampling time; its draws come from the model's shared
    noise context, which knows each row's structure.

    Args:
        entity: which rows the input holds (``atom``, ``bond``, ...), used to find each row's structure.
        context: the noise context shared by the model's stochastic layers.
        module_name: the wrapped module's name, for error messages.
    """

    def __init__(self, base_layer: nn.Linear, *, rank: int, scaling: float, generator: torch.Generator,
                 entity: str, context: NoiseContext, module_name: str) -> None:
        super().__init__(base_layer, rank=rank, scaling=scaling, generator=generator)
        self.entity = entity
        self.module_name = module_name
        self._context = [context]  # a list keeps it out of the module tree and the state dict

    @property
    def context(self) -> NoiseContext:
        return self._context[0]


class BaLoRALinear(StochasticLoRALinear):
    """LoRA whose A is sampled per structure: A~ = A + sqrt(alpha_l(x)) |A| ⊙ eps (eq. 2).

    One A~ is drawn per structure in the batch and shared by all of its rows (atoms, bonds,
    ...). With ``noise_on="AB"`` B gets the same kind of noise. With ``per_row`` every row draws
    its own noise at the rank-r bottleneck instead (eq. 2b). In mean mode it is plain LoRA.

    Args:
        slot: this layer's index l into alpha(x).
    """

    def __init__(self, base_layer: nn.Linear, *, rank: int, scaling: float, generator: torch.Generator,
                 entity: str, slot: int, noise_on: str, per_rank: bool, context: NoiseContext,
                 module_name: str, per_row: bool = False, prior: str = "gaussian", kl_count: str = "element") -> None:
        super().__init__(base_layer, rank=rank, scaling=scaling, generator=generator, entity=entity, context=context,
                         module_name=module_name)
        self.per_row = per_row
        self.prior = prior
        self.kl_count = kl_count
        self.slot = slot
        self.noise_on = noise_on
        self.per_rank = per_rank

    def noise_scale(self, noise_alpha: torch.Tensor) -> torch.Tensor:
        """sqrt(alpha) for this layer: [G, 1] (per layer) or [G, r] (per rank component)."""
        mine = noise_alpha[:, self.slot]
        return mine.sqrt() if self.per_rank else mine.sqrt().unsqueeze(1)

    def n_noisy_elements(self) -> tuple[int, int]:
        """(elements per rank component, rank components): A has d per component, B adds k."""
        per_component = self.base_layer.in_features
        if self.noise_on == "AB":
            per_component += self.base_layer.out_features
        return per_component, self.rank

    def kl_per_graph(self, noise_alpha: torch.Tensor, prior_c: float) -> torch.Tensor:
        """KL of this layer for each structure, [G] (eqs. 5, 5b; method.md §4).

        ``kl_count="element"`` counts every noisy element (the KL of the weights A~);
        ``"layer"`` counts each noise level alpha once (per layer, or per rank component).
        """
        mine = noise_alpha[:, self.slot]
        kl = kl_log_uniform(mine) if self.prior == "log_uniform" else kl_multiplicative_gaussian(mine, prior_c)
        if self.kl_count == "layer":
            return kl.sum(1) if self.per_rank else kl
        per_component, components = self.n_noisy_elements()
        return per_component * (kl.sum(1) if self.per_rank else components * kl)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ctx = self.context
        if self.disabled or not ctx.active:
            return super().forward(x)
        leading = x.shape[0]
        rows = x.reshape(-1, x.shape[-1])
        if self.per_row:
            return self._forward_per_row(x, rows, leading).reshape(*x.shape[:-1], -1)
        layout = ctx.layout(self.entity, leading, rows.shape[0] // max(leading, 1), self.module_name)
        scale = self.noise_scale(ctx.noise_alpha)  # [G, 1] or [G, r]
        n_graphs = ctx.num_graphs
        eps_a = ctx.standard_normal((n_graphs, self.rank, rows.shape[1]), rows)
        noise_a = scale.unsqueeze(2) * self.lora_A.abs().unsqueeze(0) * eps_a  # [G, r, d]
        # When merged, W0 already holds s·B·A and only the noise part is added; otherwise one
        # per-structure matmul with A~ = A + noise gives A~ x directly.
        xa = per_graph_matmul(rows, noise_a if self.merged else noise_a + self.lora_A, layout)  # [n_rows, r]
        out = torch.addmm(self._base(rows), xa, self.lora_B.t(), alpha=self.scaling)
        if self.noise_on == "AB":
            if self.merged:
                xa = xa + F.linear(rows, self.lora_A)
            eps_b = ctx.standard_normal((n_graphs, self.base_layer.out_features, self.rank), rows)
            noise_b = scale.unsqueeze(1) * self.lora_B.abs().unsqueeze(0) * eps_b  # [G, k, r]
            out = out.add(per_graph_matmul(xa, noise_b, layout), alpha=self.scaling)
        return out.reshape(*x.shape[:-1], -1)

    def forward_pairwise(self, node: torch.Tensor, nbr_idx: torch.Tensor, edge: torch.Tensor, *,
                         copies: int = 1) -> torch.Tensor:
        """``self(cat[node_i, node_j, edge_ij])`` [N, M, k] without the concatenation.

        The same noise draw as :meth:`forward`; A~ x splits by columns like the weight, so the
        rank-r noise term of each atom is computed once and the edges' once per structure copy.
        Per-row noise and noise on B take the general path on the built rows.
        """
        ctx = self.context
        if self.disabled or not ctx.active or self.per_row or self.noise_on == "AB":
            # mean mode stays on the built rows (not LoRA's split weight): the shipped releases'
            # noise heads were fitted on these means, and a rounding change would move their figures
            return self.forward(pairwise_concat(node, nbr_idx, edge, copies=copies))
        n_rows, n_slots = nbr_idx.shape
        width = node.shape[1]
        # W0 + s·B·A; the edges' part is projected once for all structure copies
        out = pairwise_terms(self.effective_weight(), self.base_layer.bias, node, nbr_idx, edge, copies=copies)
        scale = self.noise_scale(ctx.noise_alpha)
        eps_a = ctx.standard_normal((ctx.num_graphs, self.rank, self.base_layer.in_features), node)
        noise_a = scale.unsqueeze(2) * self.lora_A.abs().unsqueeze(0) * eps_a  # [G, r, d]
        atoms = ctx.layout(self.entity, n_rows, 1, self.module_name)
        slots = ctx.layout(self.entity, n_rows, n_slots, self.module_name)
        edge_rows = edge.unsqueeze(0).expand(copies, *edge.shape).reshape(n_rows * n_slots, -1)
        xa = (per_graph_matmul(node, noise_a[:, :, :width], atoms).unsqueeze(1)
              + per_graph_matmul(node, noise_a[:, :, width:2 * width], atoms)[nbr_idx]  # j is in i's structure
              + per_graph_matmul(edge_rows, noise_a[:, :, 2 * width:], slots).view(n_rows, n_slots, -1))
        return out + self.scaling * F.linear(xa, self.lora_B)

    def _forward_per_row(self, x: torch.Tensor, rows: torch.Tensor, leading: int) -> torch.Tensor:
        """Local reparameterisation (eq. 2b): A~x = Ax + sqrt(alpha (A²)(x²)) ⊙ eps, eps [n_rows, r] per row."""
        ctx = self.context
        row_graph = ctx.row_graph(self.entity, leading, rows.shape[0] // max(leading, 1), self.module_name)
        scale = self.noise_scale(ctx.noise_alpha).index_select(0, row_graph)  # [n_rows, 1] or [n_rows, r]
        # clamp: a zero row (padding, zero features) would give sqrt'(0) = inf in the backward pass
        spread = F.linear(rows.square(), self.lora_A.square()).clamp_min(1e-12).sqrt()  # [n_rows, r]
        xa = scale * spread * ctx.row_normal(row_graph, self.rank, rows)
        if not self.merged:  # merged: W0 already holds s·B·A
            xa = xa + F.linear(rows, self.lora_A)
        return torch.addmm(self._base(rows), xa, self.lora_B.t(), alpha=self.scaling)


class DropoutLoRALinear(StochasticLoRALinear):
    """LoRA with dropout on the adapter input, y = W0 x + s · B A (m ⊙ x) / (1 − p) (PEFT's ``lora_dropout``),
    kept on at test time: each sample draws new masks m ~ Bernoulli(1 − p) per row and feature (MC
    dropout; docs/method.md §11). In mean mode it is plain LoRA.

    Masks come from the noise context's per-row uniforms (m = [u ≥ p]), so in sample mode a
    structure's masks depend on the sampling seed and its key, not on how inputs are batched.

    Args:
        dropout: p, the share of input elements dropped.
    """

    def __init__(self, base_layer: nn.Linear, *, rank: int, scaling: float, generator: torch.Generator,
                 dropout: float, entity: str, context: NoiseContext, module_name: str) -> None:
        super().__init__(base_layer, rank=rank, scaling=scaling, generator=generator, entity=entity, context=context,
                         module_name=module_name)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ctx = self.context
        if self.disabled or not ctx.active:
            return super().forward(x)
        rows = x.reshape(-1, x.shape[-1])
        base = F.linear(rows, self.original_weight(), self.base_layer.bias)
        return (base + self._masked_update(rows, x.shape[0])).reshape(*x.shape[:-1], -1)

    def forward_pairwise(self, node: torch.Tensor, nbr_idx: torch.Tensor, edge: torch.Tensor, *,
                         copies: int = 1) -> torch.Tensor:
        """``self(cat[node_i, node_j, edge_ij])`` [N, M, k]: the frozen W0 by split columns (the edges
        projected once for all structure copies), the masked adapter on the built rows (rank r only)."""
        ctx = self.context
        rows = pairwise_concat(node, nbr_idx, edge, copies=copies)
        if self.disabled or not ctx.active:
            return self.forward(rows)
        n_rows, n_slots = nbr_idx.shape
        out = pairwise_terms(self.original_weight(), self.base_layer.bias, node, nbr_idx, edge, copies=copies)
        return out + self._masked_update(rows.reshape(n_rows * n_slots, -1), n_rows).view(n_rows, n_slots, -1)

    def _masked_update(self, rows: torch.Tensor, leading: int) -> torch.Tensor:
        """s · B A (m ⊙ rows) / (1 − p) for rows [n_rows, d] whose first ``leading`` dim is the entity's."""
        ctx = self.context
        row_graph = ctx.row_graph(self.entity, leading, rows.shape[0] // max(leading, 1), self.module_name)
        keep = ctx.row_uniform(row_graph, rows.shape[1], rows) >= self.dropout
        # 1 / (1 − p) goes on the small A, not on the [n_rows, d] rows
        xa = F.linear(torch.where(keep, rows, 0.0), self.lora_A / (1.0 - self.dropout))
        return self.scaling * F.linear(xa, self.lora_B)


class AlphaNet(nn.Module):
    """Inference network alpha(x) = softplus(MLP(z(x))) (eq. 3).

    Shapes: z [G, embedding_dim] -> [G, n_layers] or [G, n_layers, rank].
    The last layer starts at zero weight with bias softplus^-1(alpha_init), so alpha starts at
    ``alpha_init`` for every structure.
    """

    def __init__(self, *, embedding_dim: int, hidden: int, n_layers: int, rank: int | None,
                 alpha_init: float, constant_input: bool, generator: torch.Generator) -> None:
        super().__init__()
        self.n_layers = n_layers
        self.rank = rank
        self.constant_input = constant_input
        n_out = n_layers * (rank or 1)
        self.norm = nn.LayerNorm(embedding_dim, elementwise_affine=False)
        self.hidden = nn.Linear(embedding_dim, hidden)
        self.out = nn.Linear(hidden, n_out)
        bound = 1.0 / math.sqrt(embedding_dim)
        with torch.no_grad():
            self.hidden.weight.copy_(torch.rand(self.hidden.weight.shape, generator=generator) * 2 * bound - bound)
            self.hidden.bias.zero_()
            self.out.weight.zero_()
            self.out.bias.fill_(math.log(math.expm1(alpha_init)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.constant_input:
            z = torch.ones_like(z)
            hidden = F.silu(self.hidden(z))
        else:
            hidden = F.silu(self.hidden(self.norm(z)))
        noise_alpha = F.softplus(self.out(hidden)) + 1e-8
        shape = (z.shape[0], self.n_layers) + ((self.rank,) if self.rank else ())
        return noise_alpha.reshape(shape)
