"""The permutohedral lattice written with PyTorch tensor operations only.

It runs wherever PyTorch runs (CPU, CUDA without a built extension, MPS where
the ops exist) with no compiler, and follows the CUDA kernel
(``csrc/permutohedral_cuda.cu``) step by step, so that it is that kernel's
oracle:

1. locate: each pixel's D+1 simplex vertices become lattice keys (``D // 3 + 1``
   64-bit words of 21-bit fields, the image index in the top word: see
   :func:`key_words`) with barycentric weights, computed with the float32
   operations of ``permutohedral_math.h``;
2. sort: stable sorts by each word, the lowest first, order the entries by
   lattice point, equal keys keeping entry order;
3. number: a point starts where the key changes; a cumulative sum of the
   starts numbers the points 0..M-1 (M is read back, with the maxima the range
   check needs; ``nonzero`` and ``unique`` synchronise too);
4. splat: each point sums its own contiguous run of entries (on the CPU:
   ``index_add_`` in pixel order, which is faster there);
5. blur: neighbours are found by binary search (``searchsorted``) of the
   stepped key among the sorted point keys; D+1 passes of
   ``v + (v[prev] + v[next]) / 2`` with a zero row for missing neighbours;
6. slice: each pixel interpolates its D+1 vertices (times 1 / (1 + 2^-D)).

Determinism: identical results run to run on every device. The sorts are
stable, so their permutation is unique; the point numbering is an integer
scan; the splat's segment sums are differences of a cumulative sum taken in
64-bit fixed point, which is exact, so its result does not depend on the order
in which a device adds (no float atomics, no float scans), and on the CPU
``index_add_`` adds in index order; blur and slice are gathers and elementwise
operations; the energy is a reduction (torch's reductions use no atomics).
"""

from __future__ import annotations

import math

import torch

from .features import MAX_FEATURE_DIM, MIN_FEATURE_DIM

KEY_FIELD_BITS = 21
KEY_FIELD_BIAS = 1 << (KEY_FIELD_BITS - 1)  # coordinates must lie in [-bias, bias)
FIELDS_PER_WORD = 3  # 63 bits: a word stays a non-negative int64, which sorts as unsigned would


def key_words(dim: int) -> int:
    """64-bit words of a key in ``dim`` dimensions: coordinate i in word ``i // 3`` at bit
    ``21 * (i % 3)``, the image index in the top word above its fields (in a word of its
    own when ``dim`` is a multiple of 3). For dim 5: (coordinates 0-2), (3-4, image)."""
    return dim // FIELDS_PER_WORD + 1


def image_shift(dim: int) -> int:
    """The image index's bit in the top key word."""
    return KEY_FIELD_BITS * (dim % FIELDS_PER_WORD)


def inv_std(dim: int) -> float:
    """sqrt(2/3) (D+1), the lattice blur's scale."""
    return 0.81649658092772603 * (dim + 1)


def slice_alpha(dim: int) -> float:
    return 1.0 / (1.0 + 2.0**-dim)


# The splat's fixed-point products are formed this many bytes at a time
# (entries x 12, channel by channel), so memory stays bounded at any batch size.
SPLAT_CHUNK_BYTES = 256 * 2**20


def wide_float(device: torch.device) -> torch.dtype:
    """float64 for sums and read-backs, float32 on Apple MPS (which has no float64)."""
    return torch.float32 if device.type == "mps" else torch.float64


def feature_scales(dim: int, device: torch.device) -> torch.Tensor:
    """sqrt(2/3) (D+1) / sqrt((i+1)(i+2)) in float32, as ``feature_scale`` computes it."""
    scale = torch.tensor(inv_std(dim) / (dim + 1), dtype=torch.float32) * float(dim + 1)  # in float32, as in C++
    roots = torch.sqrt(torch.tensor([float((i + 1) * (i + 2)) for i in range(dim)], dtype=torch.float32))
    return (scale / roots).to(device)


def max_lattice_coord(dim: int, max_abs_feature: float) -> float:
    """Largest |coordinate| of a lattice point or blur neighbour (``max_lattice_coord``)."""
    return 2.0 * dim * (inv_std(dim) / math.sqrt(2.0)) * max_abs_feature + 4.0 * (dim + 1)


def max_abs_feature(dim: int) -> float:
    """Features beyond this cannot be placed in 21-bit key fields (check_feature_range)."""
    return (KEY_FIELD_BIAS - 4.0 * (dim + 1)) / (2.0 * dim * inv_std(dim) / math.sqrt(2.0))


def check_feature_range(op: str, dim: int, max_abs: float) -> None:
    """The extension's range check, with its message."""
    if not max_lattice_coord(dim, max_abs) < KEY_FIELD_BIAS:  # also false for NaN
        limit = KEY_FIELD_BIAS / max_lattice_coord(dim, 1.0)
        raise RuntimeError(
            f"{op}: features must be finite and at most about {limit:.6g} in absolute value "
            f"(are the sigmas tiny?), got {max_abs}"
        )


def locate(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Vertex coordinates ``[..., D+1 vertices, D] int64`` and barycentric weights
    ``[..., D+1] float32`` of features ``[..., D]`` (``locate`` + ``vertex_coord``)."""
    D = features.shape[-1]
    scales = feature_scales(D, features.device)
    f = features.float()
    # Elevate: elevated[j] = tail - j * cf, tail accumulating from the last feature down.
    elevated = [None] * (D + 1)
    tail = torch.zeros_like(f[..., 0])
    for j in range(D, 0, -1):
        cf = f[..., j - 1] * scales[j - 1]
        elevated[j] = tail - float(j) * cf
        tail = tail + cf
    elevated[0] = tail
    elevated = torch.stack(elevated, dim=-1)  # [..., D+1]

    # Closest remainder-0 point: round each coordinate to a multiple of D+1, ties down.
    v = elevated * torch.tensor(1.0 / (D + 1), dtype=torch.float32)
    down = torch.floor(v)
    nearest = torch.where(v - down > 0.5, down + 1, down).to(torch.int64)
    rem0 = nearest * (D + 1)
    coord_sum = nearest.sum(dim=-1, keepdim=True)

    # Rank the offsets (0 = largest); of two equal offsets the later coordinate ranks lower.
    offset = elevated - rem0.float()
    a, b = offset.unsqueeze(-1), offset.unsqueeze(-2)  # a[i] vs b[j]
    index = torch.arange(D + 1, device=f.device)
    earlier = index.view(-1, 1) > index.view(1, -1)  # j < i
    beats = torch.where(earlier, b >= a, b > a)  # coordinate j ranks above coordinate i
    rank = beats.sum(dim=-1)

    # Bring rem0 onto the hyperplane: shift the ranks by the excess, wrap those leaving 0..D.
    r = rank + coord_sum
    wrap = (r < 0).long() - (r > D).long()
    rank = r + wrap * (D + 1)
    rem0 = rem0 + wrap * (D + 1)

    # Barycentric weights from the offsets sorted by rank (largest first).
    delta = (elevated - rem0.float()) * torch.tensor(1.0 / (D + 1), dtype=torch.float32)
    ordered = torch.empty_like(delta).scatter_(-1, rank, delta)
    weights = [1.0 + ordered[..., D] - ordered[..., 0]]
    weights += [ordered[..., D - k] - ordered[..., D + 1 - k] for k in range(1, D + 1)]
    weights = torch.stack(weights, dim=-1)

    # Vertex k: rem0[i] + k where rank[i] <= D - k, else rem0[i] + k - (D+1); D stored coordinates.
    k = torch.arange(D + 1, device=f.device).view(-1, 1)  # [D+1 vertices, 1]
    rank_d, rem0_d = rank[..., :D].unsqueeze(-2), rem0[..., :D].unsqueeze(-2)  # [..., 1, D]
    coords = rem0_d + torch.where(rank_d <= D - k, k, k - (D + 1))
    return coords, weights


def pack_keys(coords: torch.Tensor, image: torch.Tensor | None = None) -> list[torch.Tensor]:
    """``coords [..., D]`` -> the key words of ``pack_key`` (:func:`key_words`), lowest first;
    ``image`` goes above the coordinates in the top word."""
    dim = coords.shape[-1]
    fields = coords + KEY_FIELD_BIAS
    words = []
    for word in range(key_words(dim)):
        first = word * FIELDS_PER_WORD
        value = torch.zeros_like(fields[..., 0])
        for i in range(first, min(first + FIELDS_PER_WORD, dim)):
            value = value | (fields[..., i] << (KEY_FIELD_BITS * (i - first)))
        words.append(value)
    if image is not None:
        words[-1] = words[-1] | (image << image_shift(dim))
    return words


def fixed_point_splat(device: torch.device) -> bool:
    """Whether the splat uses the fixed-point segment sums (everywhere but the CPU)."""
    return device.type != "cpu"


def _splat_in_pixel_order(
    vertex_point: torch.Tensor, weight: torch.Tensor, signal: torch.Tensor, num_points: int
) -> torch.Tensor:
    """The CPU splat: ``values[point] += weight * signal[pixel]`` vertex by vertex, pixel
    by pixel. On the CPU ``index_add_`` adds in index order (torch documents it as
    deterministic there), so the sums have a fixed order, and it is faster there than
    the fixed-point segment sums."""
    values = signal.new_zeros(num_points, signal.shape[1])
    for vertex in range(vertex_point.shape[1]):
        values.index_add_(0, vertex_point[:, vertex], signal * weight[:, vertex : vertex + 1])
    return values


def _splat(
    point_begin: torch.Tensor, sorted_entry: torch.Tensor, weight: torch.Tensor, signal: torch.Tensor, max_abs: float,
    vertices: int,
) -> torch.Tensor:
    """``values[point] = sum of weight * signal[pixel]`` over each point's run of sorted
    entries (entry = pixel * ``vertices`` + vertex), as a ``[M, K]`` float32 tensor;
    ``signal [pixels, K]``, ``max_abs`` = max |signal|.

    Each product is rounded to 64-bit fixed point with a power-of-two scale chosen so
    that no partial sum can overflow (barycentric weights sum to 1 per pixel); a run's
    sum is then a difference of an exact cumulative sum, taken in chunks of entries
    with the running total carried from chunk to chunk."""
    num_entries, channels = sorted_entry.numel(), signal.shape[1]
    num_points = point_begin.numel() - 1
    if not math.isfinite(max_abs):  # non-finite inputs give a non-finite result
        return torch.full((num_points, channels), float("nan"), device=signal.device)
    if max_abs == 0.0:
        return signal.new_zeros(num_points, channels)
    bound = max_abs * signal.shape[0] * 1.001  # >= sum of |weight * signal| over all entries
    scale = 2.0 ** min(126, math.floor(math.log2(2.0**62 / bound)))
    # Float32 products are exact to 24 bits before rounding, as the extension's
    # float32 sums are; the sums themselves are exact.
    scaled_weight = weight[sorted_entry] * scale
    sorted_pixel = sorted_entry // vertices
    last_entry = point_begin[1:] - 1
    # One channel at a time, as 1-D scans: CUDA scans a 1-D tensor with a device-wide
    # parallel scan, but the rows of a 2-D one with one thread block for all rows.
    channel_major = signal.t().contiguous()
    running_at_end = torch.empty(channels, num_points, dtype=torch.int64, device=signal.device)
    chunk = max(1, SPLAT_CHUNK_BYTES // 12)  # entries: a float32 product and its int64
    begins = list(range(0, num_entries, chunk))
    # The points whose run ends in each chunk (one read-back for all chunks).
    chunk_ends = torch.tensor([b + chunk for b in begins[:-1]], dtype=torch.int64, device=signal.device)
    point_splits = torch.searchsorted(last_entry, chunk_ends).tolist() + [num_points]
    for c in range(channels):
        carry, first_point = None, 0
        for begin, last_point in zip(begins, point_splits):
            end = min(begin + chunk, num_entries)
            fixed = channel_major[c, sorted_pixel[begin:end]].mul_(scaled_weight[begin:end]).round_().to(torch.int64)
            if carry is not None:
                fixed[0] += carry
            running = fixed.cumsum_(dim=0)
            carry = running[-1]
            running_at_end[c, first_point:last_point] = running[last_entry[first_point:last_point] - begin]
            first_point = last_point
    sums = torch.diff(running_at_end, dim=1, prepend=torch.zeros_like(running_at_end[:, :1]))
    return (sums.to(wide_float(signal.device)) / scale).float().t()


def _filter(
    op: str, features: torch.Tensor, values: torch.Tensor, roi: torch.Tensor | None, out_scale: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """out = A values, or with ``roi``: S = values * roi, out = out_scale * roi * A S and
    the energy sum(S * A S) per image (``filter_batch`` of the CUDA op)."""
    n, k, p = values.shape
    dim = features.shape[2]
    vertices = dim + 1
    device = values.device
    energy = torch.zeros(n, device=device) if roi is not None else None
    if values.numel() == 0:
        if features.numel() > 0:
            check_feature_range(op, dim, float(features.abs().max()))
        return torch.empty_like(values), energy

    # 1. Locate. Features are clamped first so that no coordinate overflows before the
    #    range check (which reads the true maximum) runs.
    max_abs = features.abs().max()
    limit = max_abs_feature(dim)
    safe = torch.nan_to_num(features, nan=0.0).clamp(-limit, limit)
    coords, weight = locate(safe.reshape(n * p, dim))  # [NP, V, D], [NP, V]
    image = torch.arange(n, device=device).repeat_interleave(p).unsqueeze(1)  # [NP, 1]
    keys = [word.view(-1) for word in pack_keys(coords, image)]  # entry = pixel * V + vertex
    del coords
    weight = weight.view(-1)

    # 2. Sort by the key, top word first: stably by each word, the lowest first.
    sorted_entry = None
    for word in keys:
        _, order = torch.sort(word if sorted_entry is None else word[sorted_entry], stable=True)
        sorted_entry = order if sorted_entry is None else sorted_entry[order]
    sorted_keys = [word[sorted_entry] for word in keys]
    del keys

    # 3. Number the points.
    is_start = torch.zeros_like(sorted_entry, dtype=torch.bool)
    is_start[0] = True
    for word in sorted_keys:
        is_start[1:] |= word[1:] != word[:-1]
    points_so_far = torch.cumsum(is_start, dim=0)
    signal = values * roi.unsqueeze(1) if roi is not None else values
    signal = signal.float().transpose(1, 2).reshape(n * p, k)  # pixel-major
    # Read back together: the number of points, max |feature| for the range check and,
    # for the fixed-point splat, max |signal| for its scale.
    fixed_point = fixed_point_splat(device)
    wide = wide_float(device)
    summary = [points_so_far[-1].to(wide), max_abs.to(wide)]
    summary = torch.stack(summary + ([signal.abs().max().to(wide)] if fixed_point else [])).tolist()
    check_feature_range(op, dim, summary[1])
    num_points = int(summary[0])
    vertex_point = torch.empty_like(sorted_entry).scatter_(0, sorted_entry, points_so_far - 1).view(n * p, vertices)
    starts = torch.nonzero(is_start).squeeze(1)
    point_keys = [word[starts] for word in sorted_keys]

    # 4. Splat, plus a zero row (index M) standing in for missing blur neighbours.
    if fixed_point:
        point_begin = torch.cat([starts, torch.tensor([sorted_entry.numel()], device=device)])
        splatted = _splat(point_begin, sorted_entry, weight, signal, summary[2], vertices)
    else:
        splatted = _splat_in_pixel_order(vertex_point, weight.view(n * p, vertices), signal, num_points)
    lattice = torch.cat([splatted, signal.new_zeros(1, k)])

    # 5. Blur along the D+1 directions.
    neighbours = _blur_neighbours(point_keys, dim)
    for direction in range(vertices):
        prev, next_ = neighbours[direction]
        blurred = lattice[:num_points] + 0.5 * (lattice[prev] + lattice[next_])
        lattice = torch.cat([blurred, lattice[num_points:]])  # the zero row stays zero

    # 6. Slice: acc = sum_k (alpha * weight_k) * lattice[vertex_k], vertex by vertex.
    alpha_weight = weight.view(n * p, vertices) * torch.tensor(slice_alpha(dim), dtype=torch.float32)
    acc = torch.zeros(n * p, k, device=device)
    for vertex in range(vertices):
        acc.addcmul_(alpha_weight[:, vertex : vertex + 1], lattice[vertex_point[:, vertex]])
    if roi is None:
        return acc.view(n, p, k).transpose(1, 2).contiguous(), None
    energy = (signal * acc).reshape(n, p * k).sum(dim=1, dtype=wide).float()  # sum(S * A S)
    acc.mul_(roi.float().reshape(n * p, 1) * out_scale)
    return acc.view(n, p, k).transpose(1, 2).contiguous(), energy


def _blur_neighbours(point_keys: list[torch.Tensor], dim: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per direction, the indices of each point's neighbours ``point + step`` and
    ``point - step`` (step = (-1, ..., -1, D at the direction, -1, ...)); M where absent.
    ``point_keys``: the points' key words, lowest first, the points sorted by key."""
    mask = (1 << KEY_FIELD_BITS) - 1
    coords = torch.stack(
        [(point_keys[i // FIELDS_PER_WORD] >> (KEY_FIELD_BITS * (i % FIELDS_PER_WORD))) & mask for i in range(dim)],
        dim=1,
    )  # biased fields
    shift = image_shift(dim)
    image_bits = (point_keys[-1] >> shift) << shift
    # All 2(D+1) stepped keys at once: [direction, sign, point, coordinate].
    steps = torch.full((dim + 1, dim), -1, dtype=torch.int64, device=coords.device)
    steps[:dim].fill_diagonal_(dim)
    stepped = pack_keys(coords + torch.stack([steps, -steps], dim=1).unsqueeze(2) - KEY_FIELD_BIAS)
    stepped[-1] = stepped[-1] | image_bits
    find = _find_two_word_keys if len(point_keys) == 2 else _find_keys
    found = find(point_keys, stepped)  # [D+1, 2, M]
    return [(found[direction, 0], found[direction, 1]) for direction in range(dim + 1)]


def _find_two_word_keys(point_keys: list[torch.Tensor], queries: list[torch.Tensor]) -> torch.Tensor:
    """The index of each query key among the sorted point keys, M where absent (keys of two
    words: D 3 to 5). Both words are replaced by their ranks among the distinct values of that
    word, and a combined rank hi_rank * distinct_lo + lo_rank orders the points as (hi, lo) do,
    so one ``searchsorted`` finds a key."""
    point_lo, point_hi = point_keys
    num_points = point_lo.numel()
    distinct_lo = torch.unique(point_lo)
    distinct_hi = torch.unique_consecutive(point_hi)
    combined = torch.searchsorted(distinct_hi, point_hi) * distinct_lo.numel() + torch.searchsorted(distinct_lo, point_lo)
    lo, hi = queries
    lo_rank = torch.searchsorted(distinct_lo, lo).clamp_(max=distinct_lo.numel() - 1)
    hi_rank = torch.searchsorted(distinct_hi, hi).clamp_(max=distinct_hi.numel() - 1)
    present = (distinct_lo[lo_rank] == lo) & (distinct_hi[hi_rank] == hi)
    at = torch.searchsorted(combined, hi_rank * distinct_lo.numel() + lo_rank).clamp_(max=num_points - 1)
    present &= combined[at] == hi_rank * distinct_lo.numel() + lo_rank
    return torch.where(present, at, num_points)


def _find_keys(point_keys: list[torch.Tensor], queries: list[torch.Tensor]) -> torch.Tensor:
    """:func:`_find_two_word_keys` for keys of any number of words: every key, point or query,
    gets a code equal for equal keys, built word by word from the top (a pair of a code and a
    word's rank is renumbered densely, so codes stay below the number of keys); a table from
    code to point index then answers every query."""
    num_points = point_keys[0].numel()
    shape = queries[0].shape
    code = None
    for points, asked in zip(reversed(point_keys), reversed(queries)):
        _, rank = torch.unique(torch.cat([points, asked.reshape(-1)]), return_inverse=True)
        pair = rank if code is None else code * (int(rank.max()) + 1) + rank
        _, code = torch.unique(pair, return_inverse=True)
    table = torch.full((int(code.max()) + 1,), num_points, dtype=torch.int64, device=code.device)
    table[code[:num_points]] = torch.arange(num_points, device=code.device)
    return table[code[num_points:]].view(shape)


def portable_filter(features: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``features [N, P, D]`` (D from 2 to 16), ``values [N, K, P]`` -> ``A values`` ``[N, K, P]`` float32."""
    _check_inputs("permutohedral_filter", features, values)
    out, _ = _filter("permutohedral_filter", features.float(), values.float(), None, 1.0)
    return out


def portable_crf(
    features: torch.Tensor, probs: torch.Tensor, roi: torch.Tensor, out_scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """With ``S = probs * roi``: (``sum(S * A S)`` per image ``[N]``, ``out_scale * roi * A S``)."""
    op = "permutohedral_crf"
    _check_inputs(op, features, probs)
    if roi.dim() != 2 or roi.shape[0] != probs.shape[0] or roi.shape[1] != probs.shape[2]:
        raise RuntimeError(f"{op}: roi must be float32 [N, P] matching probs {list(probs.shape)}, got {list(roi.shape)}")
    out, energy = _filter(op, features.float(), probs.float(), roi.float(), float(out_scale))
    return energy, out


def _check_inputs(op: str, features: torch.Tensor, values: torch.Tensor) -> None:
    """The extension's shape checks, with its messages."""
    if features.dim() != 3 or not MIN_FEATURE_DIM <= features.shape[2] <= MAX_FEATURE_DIM:
        raise RuntimeError(f"{op}: features must be [N, P, D] with {MIN_FEATURE_DIM} <= D <= {MAX_FEATURE_DIM} "
                           f"(spatial axes + channels), got {list(features.shape)}")
    if values.dim() != 3 or values.shape[0] != features.shape[0] or values.shape[2] != features.shape[1]:
        raise RuntimeError(
            f"{op}: values must be [N, K, P] matching features {list(features.shape)}, got {list(values.shape)}"
        )
    if features.device != values.device:
        raise RuntimeError(f"{op}: features and values must be on one device, got {features.device} and {values.device}")
