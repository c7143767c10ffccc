"""Per-structure noise bookkeeping for BaLoRA: which structure each row belongs to, alpha(x), RNG.

Every row (atom, bond, angle, ...) of one structure must see the same sampled A~ (method.md §3).
Rows are scattered into fixed-size blocks that each belong to one structure, so each
structure's noise matrix is applied with one batched matmul, never a Python loop over structures.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch


#: rows per block; a structure's rows fill whole blocks, so padding wastes < this many rows each
BLOCK_ROWS = 128


@dataclass
class RowLayout:
    """Where each flattened row sits in fixed-size blocks that each hold rows of one structure."""

    flat: torch.Tensor  # [n_rows] position in the flattened [n_blocks * block_rows] padding
    block_graph: torch.Tensor  # [n_blocks] structure owning each block
    n_blocks: int
    block_rows: int


def row_layout(graph_index: torch.Tensor, num_graphs: int, block_rows: int = BLOCK_ROWS) -> RowLayout:
    """Blocks of ``block_rows`` rows per structure; works for any row order."""
    counts = torch.bincount(graph_index, minlength=num_graphs)
    # Batches list each structure's rows together, in order: then the sort is the identity.
    in_order = len(graph_index) < 2 or bool((graph_index[1:] >= graph_index[:-1]).all())
    order = torch.arange(len(graph_index), device=graph_index.device) if in_order else torch.argsort(graph_index, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    position = torch.empty_like(graph_index)
    position[order] = torch.arange(len(graph_index), device=graph_index.device) - starts[graph_index[order]]
    blocks_per_graph = (counts + block_rows - 1) // block_rows
    first_block = torch.cumsum(blocks_per_graph, 0) - blocks_per_graph
    block = first_block[graph_index] + position // block_rows
    block_graph = torch.repeat_interleave(torch.arange(num_graphs, device=graph_index.device), blocks_per_graph)
    flat = block * block_rows + position % block_rows
    return RowLayout(flat, block_graph, int(blocks_per_graph.sum()), block_rows)


def per_graph_matmul(rows: torch.Tensor, weights: torch.Tensor, layout: RowLayout) -> torch.Tensor:
    """rows [n_rows, d] times each row's structure matrix weights [G, out, d]^T -> [n_rows, out].

    Exact; one batched matmul over blocks, so memory stays about the input's size.
    """
    size = (layout.n_blocks * layout.block_rows, rows.shape[-1])
    # Padding slots are never read back; without autograd they need not be zeroed.
    padded = rows.new_zeros(size) if torch.is_grad_enabled() else rows.new_empty(size)
    padded = padded.index_copy(0, layout.flat, rows).view(layout.n_blocks, layout.block_rows, -1)
    block_weights = weights.index_select(0, layout.block_graph)  # [n_blocks, out, d]
    out = torch.bmm(padded, block_weights.transpose(1, 2))
    return out.reshape(-1, out.shape[-1]).index_select(0, layout.flat)


@dataclass
class NoiseContext:
    """State shared by all BaLoRA layers of one model during one forward pass.

    Attributes:
        active: False in mean mode (no noise is drawn).
        graph_index: entity type -> [n_rows] structure index.
        num_graphs: structures in the (possibly sample-tiled) batch.
        noise_alpha: alpha(x), [num_graphs, n_layers] or [num_graphs, n_layers, rank].
        generator: seeded RNG in sample mode; None uses the global RNG (training).
        noise_keys: optional [G0] integer key per structure of the untiled batch. When set (sample
            mode), each structure's draws come from its own stream seeded by (noise_seed, key,
            draw number), so results do not depend on how inputs are batched or sharded.
    """

    active: bool = False
    graph_index: dict[str, torch.Tensor] = field(default_factory=dict)
    num_graphs: int = 0
    noise_alpha: torch.Tensor | None = None
    generator: torch.Generator | None = None
    noise_keys: torch.Tensor | None = None
    noise_seed: int = 0
    _draws: int = 0
    _layouts: dict[tuple[str, int], RowLayout] = field(default_factory=dict)

    def set(self, *, graph_index: dict[str, torch.Tensor], num_graphs: int, noise_alpha: torch.Tensor,
            generator: torch.Generator | None, noise_keys: torch.Tensor | None = None,
            noise_seed: int = 0) -> None:
        self.active = True
        self.noise_keys = noise_keys
        self.noise_seed = noise_seed
        self._draws = 0
        self.graph_index = graph_index
        self.num_graphs = num_graphs
        self.noise_alpha = noise_alpha
        self.generator = generator
        self._layouts = {}

    def clear(self) -> None:
        self.active = False
        self.graph_index = {}
        self.noise_alpha = None
        self.noise_keys = None
        self._layouts = {}

    def layout(self, entity: str, leading_rows: int, rows_per_leading: int, module_name: str) -> RowLayout:
        """Layout for an input whose first dim holds ``leading_rows`` rows of type ``entity``."""
        key = (entity, rows_per_leading)
        if key not in self._layouts:
            index = self.row_graph(entity, leading_rows, rows_per_leading, module_name)
            self._layouts[key] = row_layout(index, self.num_graphs)
        return self._layouts[key]

    def row_graph(self, entity: str, leading_rows: int, rows_per_leading: int, module_name: str) -> torch.Tensor:
        """The structure of every flattened row, [leading_rows * rows_per_leading]."""
        if entity not in self.graph_index:
            raise RuntimeError(f"{module_name}: the backbone gives no structure index for entity {entity!r}")
        index = self.graph_index[entity]
        if index.shape[0] != leading_rows:
            raise RuntimeError(
                f"{module_name}: input has {leading_rows} rows but the batch has {index.shape[0]} "
                f"{entity} rows; the module's entity mapping in the backbone is wrong"
            )
        return index.repeat_interleave(rows_per_leading) if rows_per_leading > 1 else index

    def standard_normal(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """N(0, 1) noise of ``shape`` = (num_graphs, ...), one slice per (tiled) structure."""
        self._draws += 1
        if self.noise_keys is not None:
            return self._keyed_normal(shape, like)
        return self._unkeyed_normal(shape, like)

    def _unkeyed_normal(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """From the seeded generator (sample mode) or the global RNG (training)."""
        if self.generator is None:
            return torch.randn(shape, dtype=like.dtype, device=like.device)
        noise = torch.randn(shape, generator=self.generator, dtype=like.dtype, device=self.generator.device)
        return noise.to(like.device)

    def _structure_stream(self, key: int) -> torch.Generator:
        """The generator of one structure for the current layer draw (see :func:`_stream_seed`)."""
        return torch.Generator().manual_seed(_stream_seed(self.noise_seed, key, self._draws))

    def row_normal(self, row_graph: torch.Tensor, width: int, like: torch.Tensor) -> torch.Tensor:
        """N(0, 1) noise [n_rows, width], independent for every row (the local reparameterisation).

        With ``noise_keys`` each structure's rows draw from its own stream, so a row's noise depends
        on (seed, structure key, layer draw, row position within the structure), not on the batch.
        """
        return self._row_noise(row_graph, width, like, torch.randn)

    def row_uniform(self, row_graph: torch.Tensor, width: int, like: torch.Tensor) -> torch.Tensor:
        """U(0, 1) noise [n_rows, width], independent for every row and keyed like :meth:`row_normal`
        (MC-dropout masks)."""
        return self._row_noise(row_graph, width, like, torch.rand)

    def _row_noise(self, row_graph: torch.Tensor, width: int, like: torch.Tensor, draw: Any) -> torch.Tensor:
        self._draws += 1
        if self.noise_keys is None:
            if self.generator is None:
                return draw((row_graph.shape[0], width), dtype=like.dtype, device=like.device)
            return draw((row_graph.shape[0], width), generator=self.generator, dtype=like.dtype).to(like.device)
        keys = self.noise_keys.tolist()
        copies = self.num_graphs // len(keys)
        counts = torch.bincount(row_graph, minlength=self.num_graphs).tolist()
        per_structure = [draw((copies, counts[g], width), dtype=like.dtype, generator=self._structure_stream(key))
                         for g, key in enumerate(keys)]
        # rows sorted by structure; tiled structure j is copy j // G0 of structure j % G0
        in_graph_order = torch.cat([per_structure[j % len(keys)][j // len(keys)] for j in range(self.num_graphs)])
        if len(row_graph) < 2 or bool((row_graph[1:] >= row_graph[:-1]).all()):
            return in_graph_order.to(like.device)  # rows already in structure order
        noise = torch.empty_like(in_graph_order)
        noise[torch.argsort(row_graph.cpu(), stable=True)] = in_graph_order
        return noise.to(like.device)

    def _keyed_normal(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        keys = self.noise_keys.tolist()
        copies = shape[0] // len(keys)
        per_structure = [torch.randn((copies, *shape[1:]), dtype=like.dtype, generator=self._structure_stream(key))
                         for key in keys]
        # tiled order: copy s of structure g sits at s * G0 + g
        return torch.stack(per_structure, dim=1).reshape(shape).to(like.device)


def _stream_seed(seed: int, key: int, draw: int) -> int:
    """A 63-bit generator seed for (sampling seed, structure key, layer draw), hashed so that
    distinct triples never share a stream by arithmetic coincidence."""
    digest = hashlib.blake2b(f"{seed}:{key}:{draw}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1
