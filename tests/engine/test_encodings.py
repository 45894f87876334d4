"""Field encodings: positional encoding, hash grid (fast path vs. slow reference), tiny MLP."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from engine.fields.encodings import (
    HashGrid,
    HashGridConfig,
    PositionalEncoding,
    TinyMLP,
    hash_grid_reference,
)

# Resolutions 4, 6, 12, 21, 36, 64: with T = 2^10 the first two levels are dense, the rest hash.
SMALL = HashGridConfig(levels=6, features_per_level=2, log2_table_size=10, base_resolution=4, max_resolution=64)
BBOX_MIN = (-1.0, -0.5, 0.0)
BBOX_MAX = (1.0, 1.5, 1.0)


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """These tests run many tiny ops; with 2 OpenMP threads on a 2-core box that is also busy, each op's
    barrier waits on a descheduled thread and the fitting test slows ~20x. One thread is robust."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_grid(config: HashGridConfig = SMALL, seed: int = 0) -> HashGrid:
    """A grid with O(1) random table entries, so interpolation errors are not hidden by tiny values."""
    torch.manual_seed(seed)
    grid = HashGrid(config, BBOX_MIN, BBOX_MAX)
    with torch.no_grad():
        grid.table.normal_()
    return grid


def to_world(u: torch.Tensor) -> torch.Tensor:
    """Unit-cube coordinates [N, 3] → world points in the test bounding box."""
    lo, hi = torch.tensor(BBOX_MIN), torch.tensor(BBOX_MAX)
    return lo + u * (hi - lo)


def sample_points(n: int = 600, seed: int = 1) -> torch.Tensor:
    """Random points, points on cell boundaries (all levels with res divisible by 4), bbox faces and corners,
    and points outside the box."""
    g = torch.Generator().manual_seed(seed)
    inside = torch.rand(n, 3, generator=g)
    on_cells = torch.randint(0, 5, (n // 4, 3), generator=g) / 4.0  # multiples of 1/4: cell faces
    mixed = inside[: n // 4].clone()
    mixed[:, 1] = torch.randint(0, 13, (n // 4,), generator=g) / 12.0  # one coordinate on a face
    corners = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.5]])
    outside = torch.rand(n // 4, 3, generator=g) * 3.0 - 1.0  # [-1, 2]^3: mostly partly outside
    return to_world(torch.cat([inside, on_cells, mixed, corners, outside]))


def test_positional_encoding_shape_and_values():
    pe = PositionalEncoding(4)
    x = torch.rand(5, 7, 3)
    y = pe(x)
    assert pe.out_dim == 3 * (1 + 2 * 4) == y.shape[-1]
    assert y.shape == (5, 7, 27)
    torch.testing.assert_close(y[..., :3], x)
    for k in range(4):
        block = y[..., 3 + 6 * k: 3 + 6 * (k + 1)]
        torch.testing.assert_close(block[..., :3], torch.sin(2**k * math.pi * x))
        torch.testing.assert_close(block[..., 3:], torch.cos(2**k * math.pi * x))

    pe_no_input = PositionalEncoding(2, include_input=False)
    assert pe_no_input.out_dim == 12
    torch.testing.assert_close(pe_no_input(x), y[..., 3:15])
    assert PositionalEncoding(0).out_dim == 3


def test_hash_grid_layout_has_dense_and_hashed_levels():
    grid = make_grid()
    assert grid.resolutions == [4, 6, 12, 21, 36, 64]
    assert grid.dense == [True, True, False, False, False, False]
    assert grid.level_sizes == [125, 343, 1024, 1024, 1024, 1024]
    assert grid.table.shape == (sum(grid.level_sizes), 2)
    assert grid.out_dim == 12
    # Default config reaches the requested finest resolution exactly.
    assert HashGrid(HashGridConfig(), BBOX_MIN, BBOX_MAX).resolutions[-1] == 512


def test_hash_grid_output_shape():
    grid = make_grid()
    assert grid(torch.rand(10, 3)).shape == (10, 12)
    assert grid(torch.rand(2, 5, 3)).shape == (2, 5, 12)
    assert grid(torch.rand(0, 3)).shape == (0, 12)


def test_hash_grid_matches_reference_values_and_gradients():
    grid = make_grid()
    x = sample_points()
    weights = torch.randn(x.shape[0], grid.out_dim, generator=torch.Generator().manual_seed(3))

    results = []
    for fn in (grid.forward, lambda p: hash_grid_reference(grid, p)):
        grid.zero_grad()
        xg = x.clone().requires_grad_()
        out = fn(xg)
        (out * weights).sum().backward()
        results.append((out.detach(), grid.table.grad.clone(), xg.grad.clone()))
    (fast, fast_dt, fast_dx), (ref, ref_dt, ref_dx) = results

    assert (fast - ref).abs().max() < 1e-5
    assert (fast_dt - ref_dt).abs().max() < 1e-5
    assert (fast_dx - ref_dx).abs().max() < 1e-5 * grid.resolutions[-1]  # d/dx scales with resolution
    # Points outside the box are clamped onto it: zero gradient along the clamped axes.
    u = (x - torch.tensor(BBOX_MIN)) / (torch.tensor(BBOX_MAX) - torch.tensor(BBOX_MIN))
    outside = (u < 0) | (u > 1)
    assert outside.any() and (fast_dx[outside] == 0).all()


def test_hash_grid_clamps_outside_points():
    grid = make_grid()
    x = torch.tensor([[5.0, -3.0, 0.5], [-9.0, 9.0, 9.0]])
    clamped = torch.maximum(torch.minimum(x, torch.tensor(BBOX_MAX)), torch.tensor(BBOX_MIN))
    torch.testing.assert_close(grid(x), grid(clamped))


def test_hash_grid_gradient_matches_finite_differences():
    grid = make_grid().double()
    g = torch.Generator().manual_seed(5)
    x = to_world(torch.rand(64, 3, generator=g).double() * 0.9 + 0.05)
    weights = torch.randn(grid.out_dim, generator=g).double()

    def scalar(p: torch.Tensor) -> torch.Tensor:
        return grid(p) @ weights  # [N]: one scalar per point, points are independent

    xg = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(scalar(xg).sum(), xg)
    assert torch.isfinite(grad).all()
    eps = 1e-6
    fd = torch.empty_like(x)
    with torch.no_grad():
        for axis in range(3):
            step = torch.zeros(3, dtype=torch.float64)
            step[axis] = eps
            fd[:, axis] = (scalar(x + step) - scalar(x - step)) / (2 * eps)
    # Trilinear interpolation is polynomial inside a cell: differences agree up to rounding.
    torch.testing.assert_close(grad, fd, atol=1e-6, rtol=1e-6)


def test_hash_grid_double_backward_for_eikonal():
    grid = make_grid(HashGridConfig(levels=3, log2_table_size=8, base_resolution=2, max_resolution=8)).double()
    x = to_world(torch.rand(6, 3, generator=torch.Generator().manual_seed(2)).double() * 0.9 + 0.05)
    assert torch.autograd.gradgradcheck(lambda p, t: hash_grid_with_table(grid, p, t),
                                        (x.requires_grad_(), grid.table.detach().clone().requires_grad_()))
    # The eikonal loss reaches the table through the point gradient.
    grid.zero_grad()
    xg = x.detach().clone().requires_grad_()
    sdf = grid(xg).sum(-1)
    (normal,) = torch.autograd.grad(sdf.sum(), xg, create_graph=True)
    ((normal.norm(dim=-1) - 1) ** 2).mean().backward()
    assert grid.table.grad is not None and grid.table.grad.abs().sum() > 0


def hash_grid_with_table(grid: HashGrid, x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """`grid(x)` with its table swapped for `table`, so gradcheck can treat the table as an input."""
    return torch.func.functional_call(grid, {"table": table}, (x,))


def test_set_active_levels_zeroes_finer_levels():
    grid = make_grid()
    x = sample_points(200)
    full = grid(x)
    f = grid.features_per_level
    for k in (0, 1, 3, 6):
        grid.set_active_levels(k)
        assert grid.active_levels == k
        out = grid(x)
        assert (out[:, k * f:] == 0).all()
        torch.testing.assert_close(out[:, : k * f], full[:, : k * f])
        torch.testing.assert_close(hash_grid_reference(grid, x), out, atol=1e-5, rtol=0)
    grid.set_active_levels(99)
    assert grid.active_levels == grid.n_levels
    # Inactive levels receive no gradient.
    grid.set_active_levels(2)
    grid.zero_grad()
    grid(x).sum().backward()
    offsets = sum(grid.level_sizes[:2])
    assert grid.table.grad[:offsets].abs().sum() > 0 and (grid.table.grad[offsets:] == 0).all()


def test_hash_grid_mlp_fits_smooth_function():
    torch.manual_seed(0)
    config = HashGridConfig(levels=8, features_per_level=2, log2_table_size=14, base_resolution=4, max_resolution=64)
    grid = HashGrid(config, (-1.0, -1.0, -1.0), (1.0, 1.0, 1.0))
    mlp = TinyMLP(grid.out_dim, 64, 2, 1)
    x = torch.rand(4096, 3) * 2 - 1
    target = torch.sin(3 * x[:, 0]) * torch.cos(2 * x[:, 1]) + x[:, 2]
    opt = torch.optim.Adam([*grid.parameters(), *mlp.parameters()], lr=1e-2)
    for _ in range(200):
        loss = ((mlp(grid(x))[:, 0] - target) ** 2).mean()
        if loss.item() < 2e-4:  # converged well past the bar (typically ~70 steps): stop early
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        mse = ((mlp(grid(x))[:, 0] - target) ** 2).mean().item()
    assert mse < 1e-3, mse


def test_tiny_mlp_layers_and_zero_init():
    mlp = TinyMLP(5, 32, 3, 4, activation="softplus", last_zero_init=True)
    linears = [m for m in mlp if isinstance(m, torch.nn.Linear)]
    assert [lin.out_features for lin in linears] == [32, 32, 32, 4]
    assert isinstance(mlp[1], torch.nn.Softplus)
    x = torch.randn(16, 5)
    y = mlp(x)
    assert y.shape == (16, 4) and (y == 0).all()
    # Zero-initialised, but not dead: the last layer still receives gradient.
    y.sum().backward()
    assert linears[-1].weight.grad.abs().sum() > 0
    assert len(TinyMLP(5, 32, 0, 4)) == 1
    assert (TinyMLP(5, 32, 2, 4)(x) != 0).any()
    with pytest.raises(ValueError):
        TinyMLP(5, 32, 2, 4, activation="tanh")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_hash_grid_cuda_matches_cpu():
    grid = make_grid()
    x = sample_points()
    weights = torch.randn(x.shape[0], grid.out_dim)
    outs = []
    for device in ("cpu", "cuda"):
        g = copy.deepcopy(grid).to(device)
        xg = x.detach().to(device).requires_grad_()
        out = g(xg)
        (out * weights.to(device)).sum().backward()
        outs.append([t.detach().cpu() for t in (out, g.table.grad, xg.grad)])
    for a, b in zip(*outs):
        assert (a - b).abs().max() < 1e-4
