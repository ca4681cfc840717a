"""Dense MLA decoding for Hopper (sm_90a), warp-specialized: one warpgroup's softmax beside the other's products.

Why a third Hopper kernel: in :mod:`.decode_dense_sm90` both warpgroups compute a 32-column half of the
scores, then both do softmax, then both multiply by V, with barriers between; the tensor cores idle
while softmax runs, and the score products (N=32 per warpgroup, Q re-read from shared memory by both)
ask more of shared memory than a N=64 product does. Here the roles are split (``gl.warp_specialize``):

* **softmax warpgroup** (the default partition, 4 warps): the whole score tile ``S = Q Kᵀ`` [64, 64]
  (one N=64 product per KV tile), online softmax, ``P`` and the rescale factor to shared memory, and the
  left output half ``O[:, :256] += P V[:, :256]``;
* **output warpgroup** (4 warps): the right half ``O[:, 256:] += P V[:, 256:]``, rescaled by the factor
  the softmax warpgroup published;
* **loader** (4 warps): Q and K/V tiles into a two-stage ring: whole K tiles (64 keys inside one page)
  as nine 64x64 TMA boxes, each counted in bytes on a ready barrier of its own so the score products
  start on the first box landed (``BOX_READY``), where the cache allows it (one KV head, pages holding
  whole tiles, TMA-able strides: :func:`tma_view`), otherwise, and for a request's last,
  partial tile, gathered through the block table with ``cp.async`` (any page size; missing rows
  zero-filled, so the NaN a cache may hold past a sequence's end never meets ``P V``).

With ``SOFTMAX_ONLY`` (chosen for at most :data:`SOFTMAX_ONLY_MAX_ROWS` query rows per KV head, and
:data:`SOFTMAX_ONLY_MAX_ROWS_BOXED` where K tiles come by TMA on per-box barriers) the
softmax warpgroup keeps no output half: two output warpgroups own ``O[:, :256]`` and ``O[:, 256:]``,
each as two N=128 products (with 16 warps the launch cap is 128 registers a thread, and ``ptxas`` fits
every instruction under it: one N=256 product needs 154), and the softmax warpgroup goes on to the next
tile's scores while they multiply. Its loader then has less time to bring a tile (the stage it fills is
freed later relative to when it is needed), so it pays where the work per KV head is small.

Schedule choices, constexprs and launcher arguments, set by measurement (H200, one run each, b=128,
h_q 128 and 64; ``benchmarks/results/2026-11-27-h200-ws-*``):

* ``TMA_K``: ``True`` (default): 0.787-0.857 of FlashMLA against 0.735-0.808 by ``cp.async`` at h_q=128,
  0.893 against 0.849 at h_q=64, in the same run (``2026-11-27-h200-ws-tma-tune.json``).
* ``SOFTMAX_ONLY``: at h_q=64 (64 rows) 0.940 against 0.893 with TMA (0.916-0.920 against 0.849-0.857
  without, two runs); at 128 rows (s_q=1) 0.807-0.812 against 0.787-0.810 (H100: 0.838-0.872 against
  0.788-0.822); at 256 rows (s_q=2) slower on both cards (H200 0.789-0.802 against 0.792-0.857), so 128
  rows is where it stops with one ready barrier a stage (``2026-11-27-h100-ws-tma-tune.json`` for the H100).
* ``BOX_READY``: ``True`` (default; ``K_BOXES`` barriers a stage): in the four-warpgroup form, three H200
  runs, s_q=1 h_q=128 0.821-0.851 against 0.762-0.825 on one barrier a stage, s_q=2 0.800-0.840 /
  0.847-0.861 / 0.866-0.892 against 0.796-0.803 / 0.800-0.811 / 0.812-0.841, h_q=64 0.945-0.956 against
  0.938-0.950; at 256 rows it now edges the three-warpgroup form with boxes (mean 0.822 / 0.856 / 0.879
  against 0.810 / 0.848 / 0.865), hence :data:`SOFTMAX_ONLY_MAX_ROWS_BOXED`
  (``2026-11-27-h200-ws-{loader,pstaged,box}-tune.json``).
* ``BOX_ALLOCS``: ``True`` (default; launcher ``box_allocs``; four-warpgroup form): with ``BOX_READY``, each
  box's two ready barriers in an allocation of their own (:func:`_box_bar`). The barrier analysis at lowering puts
  a partition ``bar.sync`` between two accesses to one allocation, so with one allocation for all boxes each of
  the softmax warpgroup's nine box waits a tile followed one (82 ``bar.sync`` in the kernel's PTX, 58 with it, 57
  with the ``alpha`` store below).
  H200, one process, three rounds each: 1.009-1.026x the speed without it on ten configs (b 1-128, h_q 64 and
  128, s_q 1 and 2), together with ``alpha`` stored to shared memory from the softmax's own row layout (one
  more ``bar.sync`` and a layout conversion a tile less; alone 0.98-1.01x, slower at b=128 but within the
  spread of the rounds there; with the allocations it was the fastest form at six of the ten configs)
  (``2026-11-27-h200-dense-box-allocs-ab.txt``); H100 0.998-1.046x (``2026-11-27-h100-dense-box-allocs-ab.txt``).
* ``INTERIOR_SOFTMAX``: ``True`` (default; launcher ``interior_softmax``; four-warpgroup form, 16-bit keys, positive
  scale, no causal mask): the softmax's max over unscaled scores, its scale folded into the exponent's FMA, no mask on
  tiles whose keys all lie before the request's end. H100, two passes each: 1.1-1.3 % faster at h_q=128 s_q=1, 0.3-0.7 %
  on small batches; with the causal mask (a one-compare form) within the spread at s_q=2, so not built there
  (``2026-11-28-h100-dense-interior-softmax-ab.txt``).
* ``P_HALVES``: ``True`` (default; launcher ``p_halves``; where the interior softmax runs): each tile's rescale factor
  handed over as soon as the max is known, then ``P`` for the tile's first 32 keys and their products issued while the
  last 32 are exponentiated (:func:`_softmax_halves`). H100, two machines, two passes each: 1.1-1.4 % faster at
  h_q=128 s_q=1, 0.8-1.5 % on b=16 and a ragged batch, 1.6-2.7 % slower at s_q=2 (the causal kernel, so not there).
  Measured with it and not kept: the factor alone ahead of ``P``, the hand-overs on hardware barriers
  (``bar.arrive`` / ``bar.sync``), chunked TMA boxes (``2026-11-28-h100-dense-handover-ab.txt``).
* ``LAG`` (from :data:`LAG_MIN_ROWS` = 256 query rows per KV head; launcher ``lag``; four-warpgroup form, whole TMA
  tiles of (576, 512) dims): the right output warpgroup runs a tile behind the left one. Tile ``k``'s P goes into its
  stage's RoPE slot (dead once the scores are done) with its factor, on a barrier a stage; the left warpgroup
  multiplies at once and frees the stage's left half, on which the loader issues the next tile's left boxes; the right
  one issues tile ``k``'s products only once tile ``k + 1``'s scores are queued (``s_issued``), so they run under that
  tile's softmax, when the tensor cores were otherwise idle, and then frees the right half and the RoPE slot. H100, two
  machines: 3.8-5.1 % faster at h_q=128 s_q=2, 5-8 % slower at s_q=1 (128 rows: P in halves is off with it, and the
  memory binds there too), hence the rule (``2026-11-28-h100-dense-lag-ab.txt``). With it ``LAG_HALVES`` (default;
  launcher ``lag_halves``): each value half of a tile comes as one TMA box of four chunks (:func:`tma_chunks_view`),
  three copies a tile instead of nine: 0.5-0.8 % faster again (``2026-11-28-h100-dense-lag-halves-ab.txt``).
Measured too and not kept (each slower or within noise in the same runs): asking L2 for the next tile
ahead of its copy (``cp.async.bulk.prefetch.L2``: 0.69-0.74 against 0.75-0.81); the loader issuing a
request's first K tile before its Q (-2 to -4 % without per-box barriers, mixed with them); the loader at
64 registers; ``P`` double-buffered in each K stage's RoPE slot (dead after the scores) in the
four-warpgroup form (within ±2 %); the output warpgroups taking ``P`` into registers (0.60-0.64: under the
128-register cap ``ptxas`` spills the operand and waits after every product).

With ``SPARSE`` (:mod:`.decode_sparse_sm90`, four-warpgroup form, keys by ``cp.async``) a request's block
table row is a list of cache slots, one key row each, and slots outside the cache are masked: token-sparse
decoding with each query token as a request. With ``KV_FP8`` as well the cache holds V3.2 FP8 records and
the loader dequantizes each tile in its stage (:func:`_gather_fp8_tile`). Measured for it (H200, one run,
b 64 / 128, h_q=128, s_q=2, topk=2048, kernel times): the loader at 72 registers 277.8-278.6 / 540.0-542.8
us against 293.3-297.2 / 577.6-579.2 at 64; asking L2 for the next tile's records (``PREFETCH_L2``) 1-1.5 %
faster with the loader at 64 registers but 3-5 % slower at 72, so it is off; the softmax warpgroup loading
a tile's slots before its scores rather than after, 3 % (FP8) and 0 % (BF16); the decode itself costs
25 % (224-225 us at b=64 with it skipped, about the BF16 kernel's 216); the loader issuing the next tile's copies
into the other stage before decoding this one 37-38 % slower (410.0-410.9 / 776.3-776.9 us against 297.6-298.5 /
565.2-567.6; that stage is freed only when the consumers finish the tile before, so the decode waits for them)
and no faster over per-tensor FP8 keys (``2026-11-27-h200-*-gluon-codes-ahead-tune.json``). Reading
each tile's list entries a tile ahead instead (``LIST_AHEAD``, the copies still issued after the stage is free):
b 64 / 128 286.5-289.2 / 544.1-544.2 us against 298.4-299.3 / 564.9-567.2, h_q=16 149.8-151.0 against
156.1-156.9, h_q=64 165.9-166.1 against 171.4-172.2, so on by default over the V3.2 cache
(:data:`SPARSE_FP8_LIST_AHEAD`); over a BF16 cache 232.4-232.9 against 230.9-232.0 and over per-tensor FP8 keys
(dense, the block table ahead) within 1 %, so off there (``2026-11-27-h200-*-gluon-list-ahead-tune.json``).
Over 16-bit caches each tile's slots reach the softmax warpgroup through shared memory with the tile
(:func:`_copy_slots`; BF16 b 64 / 128 241.8 / 451.0 -> 228.2 / 424.3 us); over FP8 records the loader sets the
pace and that copy cost 5 %, so the softmax warpgroup loads them itself there. The loader over FP8 records
keeps 80 registers (1.5-2.5 % faster than 72). Where each tile's time goes: the trace build (``TRACE``,
:func:`_stamp`, ``benchmarks/trace_ws.py``) and ``docs/perf-notes.md``.

``OUTPUT_DECODE`` (over the V3.2 cache, default :data:`SPARSE_FP8_OUTPUT_DECODE`): the loader only issues each
tile's copies (:func:`_issue_fp8_halves`: each value half's codes into the upper half of that half's 16-bit buffer,
its scales into a free corner of it), arriving on a barrier as they land, so two tiles are in flight; each output
warpgroup decodes its own value half of tile ``k + 1`` in place (:func:`_decode_own_half`) while tile ``k``'s
products run, and the softmax warpgroup's scores wait for both halves. Measured on an H100 80GB (three runs, one
process each, eager, ``2026-11-28-h100-sparse-output-decode-ab.txt``): b 64 / 128 at h_q=128 265.2-267.1 /
490.7-494.0 us against 284.0-285.5 / 531.6-535.0 with the loader decoding (7-8 %; two outlier rounds at b=64 left
out, in the record); h_q=64 replayed 184.8 against
182.7 (trace build's plain calls). Output warpgroups at 176 registers, the loader at 64 (at 168 the output
warpgroups spilled 56 B; 16 B with these). Measured slower or not worth keeping beside it, same record: each half's
first two blocks decoded before waiting for the last tile's ``P`` (5-6 %), each decoded block published on a
barrier of its own (10-11 %), the decode before issuing the products in one or both output warpgroups (equal, 3-4 %),
the codes widened by bit moves (10-19 %), fp16 products (1-3 % faster, but q and the keys would have to fit fp16).
Measured later the same day (``2026-11-28-sparse-softmax-window-ab.txt``): the softmax warpgroup decoding each
tile's first code block of both halves beside them (11 % slower at b=128, H200: three blocks an output warpgroup
took as long as four), the list entries copied with the codes and the mask without a division (equal, 1 % slower),
copy instructions over two records instead of eight (15 % slower; the loader spilled), the loader at 56 registers
(3.5 % slower).

A request with no key still runs one fully masked tile, so every partition walks the same sequence of
tiles and barrier phases. Split-KV plan, causal rule, masking and outputs are those of
:mod:`openmla.ops.decode_dense`; partials are merged by the combine kernel (this kernel does not fuse it).
Shared memory (bf16, d=576): Q 72 KB, two K stages 144 KB, P 8 KB: 224.8 KB of the 227 KB (225.3 with a
16-bit sparse list's slots).
"""

from __future__ import annotations

import torch

from ..._runtime import InvalidArgumentError, gluon_available
from ..combine import combine_splits
from ..decode_dense import GLUON_RUNTIME_INTS, split_workspace, splitkv_args
from ..launch import launch
from ..schedule import SCHED_BLOCK

BLOCK_M = 64
BLOCK_N = 64
NUM_WARPS = 4  # the softmax warpgroup; the output warpgroup and the loader add 4 warps each
WORKER_WARPS = (4, 4)
# registers a thread: 384 threads share 64K, so the launch cap is 168; the workers are set down to
# these and the softmax warpgroup (S, P and a 64x256 accumulator) takes what is left
MAXNREG = 168
WORKER_REGS = (168, 80)
# with SOFTMAX_ONLY a second output warpgroup joins: 512 threads share 64K registers (launch cap 128);
# each output warpgroup keeps 168 (a 64x256 fp32 accumulator), the loader 56, the softmax warpgroup
# (S and P, no accumulator) the 120 left
SOLO_MAXNREG = 128
SOLO_WORKER_REGS = (168, 56)
# sparse decoding over the V3.2 FP8 cache: the loader also decodes each tile (:func:`_gather_fp8_tile`), and
# the softmax warpgroup keeps 96 (at 56 the loader spilled 48 B around its decode, at 64 with the L2
# prefetch 40 B; at 72 and 80 the kernel keeps 8 B, at 88 32 B). The loader sets the pace there: 80 ran
# 1.5-2.5 % faster than 72 and 88 (H100, alternated twice in one process, docs/perf-notes.md)
SPARSE_FP8_WORKER_REGS = (168, 80)
# dense decoding over per-tensor FP8 codes (the four-warpgroup form): the loader decodes each tile too, at 72
# registers (80 measured 1-2 % slower there, H100, docs/perf-notes.md)
E4M3_WORKER_REGS = (168, 72)
SPARSE_FP8_PREFETCH_L2 = False  # measured slower with the loader at 72 registers (module docstring)
# over the V3.2 FP8 cache, who decodes each tile's codes: 0 the loader (:func:`_gather_fp8_tile`, one tile in
# flight); 1 the output warpgroups, each its own value half in place, the next tile's while this tile's `P V` runs
# (:func:`_decode_own_half`), the loader only issuing the copies (two tiles in flight). The trace had the loader
# busy 97 % of a tile (its copies' wait, then the decode) while the output warpgroups waited ~80 % of it. 1 ran
# 7-8 % faster at b 64 / 128, h_q=128 (H100, module docstring)
SPARSE_FP8_OUTPUT_DECODE = 1
SPARSE_FP8_OUTPUT_DECODE_REGS = (176, 64)
# the loader reads each tile's list (or block-table) entries a tile ahead: on over the V3.2 FP8 cache (3.4-4.0 %
# faster, H200), off for 16-bit lists and per-tensor FP8 keys (within noise there; module docstring)
SPARSE_FP8_LIST_AHEAD = True
LIST_AHEAD = False
# the trace build (``trace=`` of the launchers, :func:`_stamp`): pieces and tiles stamped, events a tile
# (0 loader has the stage, 1 loader published it (decoded tiles) or issued its copies, 7 a decoding loader's
# codes have all landed, 2 softmax has it and issued its scores, 3 scores done, 8 softmax math done, 9 the P
# buffer free, 4 P published, 5 first output warpgroup has P, 6 it released P and the stage; 8 and 9 are
# stamped by this kernel's softmax warpgroup only, not by the e4m3-product kernel)
TRACE_PIECES = 4
TRACE_TILES = 64
#: events 0-9 of each tile (:func:`_stamp`); 10 the program's entry (stamped as tile 0's), 11 the first output
#: warpgroup's last store of a request and 12 the softmax warpgroup's (both as the request's last tile's)
TRACE_EVENTS = 13
#: rows of the trace buffer after the pieces': every program's ``%globaltimer`` (ns, one clock for all SMs, where
#: ``clock64`` is each SM's own) at its entry and at its first output warpgroup's end, two int64 a program in launch
#: order (``program_id(1) * num_programs(0) + program_id(0)``; :func:`_stamp_program`), so a call's time can be
#: read against the spread of its programs; programs past :data:`TRACE_PROGRAMS` are not stamped
TRACE_PROGRAM_ROWS = 2
TRACE_PROGRAMS = TRACE_PROGRAM_ROWS * TRACE_TILES * TRACE_EVENTS // 2
# defaults of the schedule choices (module docstring), set by measurement
OVERLAP = False
ASYNC_ARRIVE = True
SOFTMAX_ONLY_MAX_ROWS = 128  # query rows per KV head up to which the softmax warpgroup keeps no output half
SOFTMAX_ONLY_MAX_ROWS_BOXED = 256  # the same where K tiles come by TMA on a ready barrier per box
TMA_K = True  # whole K tiles by TMA where the cache allows it (:func:`tma_view`)
# with BOX_READY: each box's two ready barriers (one a stage) in an allocation of their own, so that consecutive
# box waits carry no partition bar.sync between them (:func:`_box_bar`); 1.009-1.026x with the alpha store (H200)
BOX_ALLOCS = True
BOX_READY = True  # with TMA: one ready barrier per 64-column box, so the score products start on the first
# the four-warpgroup form's softmax: tiles every row sees whole skip the mask, the scale folded into the exponent's FMA
# (:func:`_online_softmax`; the launchers' ``interior_softmax``)
INTERIOR_SOFTMAX = True
# with the interior softmax: each tile's rescale factor handed over as soon as the max is known, then P in two halves of
# the keys, the first half's products running while the second is exponentiated (:func:`_softmax_halves`; the
# launchers' ``p_halves``); 1.1-1.4 % faster at h_q=128 s_q=1 (H100, docs/perf-notes.md item 25)
P_HALVES = True
# the four-warpgroup form with the right output warpgroup a tile behind the left (its P V under the next tile's softmax,
# which otherwise runs with the tensor cores idle), P kept in each stage's RoPE slot, each half of a stage freed apart
# (the launchers' ``lag``), from this many query rows per KV head (whole TMA tiles of (576, 512) dims): H100, 4-7 %
# faster at s_q=2 h_q=128 (256 rows), 5-8 % slower at s_q=1 (128 rows, where P in halves runs and the memory binds
# as well) (docs/perf-notes.md item 27)
LAG_MIN_ROWS = 256
# with LAG: each value half of a whole tile as one TMA box of four 64-column chunks (:func:`tma_chunks_view`), so the
# loader issues three copies a tile instead of nine, each behind a partition barrier (the launchers' ``lag_halves``).
# H100: 0.5-0.8 % faster at h_q=128 s_q=2 beside one box a chunk, both rounds (docs/perf-notes.md item 27)
LAG_HALVES = True


def softmax_only_for(rows: int, boxed: bool = False) -> bool:
    """Whether ``rows`` query rows per KV head get the four-warpgroup form (``SOFTMAX_ONLY``, module
    docstring): up to :data:`SOFTMAX_ONLY_MAX_ROWS`, or :data:`SOFTMAX_ONLY_MAX_ROWS_BOXED` when ``boxed``
    (K tiles by TMA, a ready barrier per box), where it measured faster."""
    return rows <= (SOFTMAX_ONLY_MAX_ROWS_BOXED if boxed else SOFTMAX_ONLY_MAX_ROWS)

if gluon_available():
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        async_copy,
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    # the trace build's sizes, as the kernels read them (compile-time constants)
    _TRACE_PIECES = gl.constexpr(TRACE_PIECES)
    _TRACE_TILES = gl.constexpr(TRACE_TILES)
    _TRACE_EVENTS = gl.constexpr(TRACE_EVENTS)
    _TRACE_PROGRAMS = gl.constexpr(TRACE_PROGRAMS)
    _TRACE_PROGRAM_BASE = gl.constexpr(TRACE_PIECES * TRACE_TILES * TRACE_EVENTS)

    from .decode_dense_sm90 import _online_softmax, _piece_bounds, _request_span, _softmax_exp, _softmax_max

    def _quarter_layout(reg_bases, lane_bases):
        """A distributed layout of a [64, 128] output quarter over four warps, 16 rows a warp as ``wgmma``'s
        accumulator has them."""
        return gl.DistributedLinearLayout(reg_bases=reg_bases, lane_bases=lane_bases, warp_bases=[[16, 0], [32, 0]],
                                          block_bases=[], shape=[64, 128])

    #: How an output quarter ([64, 128] fp32, four warps) goes to ``out``: each thread holds 8 consecutive columns of a
    #: row (one 16-byte store in bf16, a lane quad's 64 contiguous bytes), where the ``wgmma`` accumulator gives it
    #: pairs 8 columns apart (4-byte stores, each warp's store touching eight rows' lines for 16 bytes each; in a
    #: trace of b=64 with one 8-tile request a piece, an H200, the output warpgroups' last stores took ~10,000 of
    #: the piece's ~50,000 cycles). Rows stay where the accumulator has them (lane bits 2-4 and a register bit), so only columns move,
    #: within each warp: lane bits 0-1 (columns 2 and 4) trade places with the registers of columns 8 and 16. Triton
    #: 3.6 lowers a conversion that trades one lane bit for one register bit to shuffles and one that trades two
    #: through shared memory (scratch this kernel has no room for), hence two steps (``_STORE_STEP``); the last
    #: conversion only renames registers (columns 1, 2, 4 first, for the vector stores).
    _STORE_STEP = gl.constexpr(_quarter_layout([[0, 1], [8, 0], [0, 2], [0, 16], [0, 32], [0, 64]],
                                               [[0, 8], [0, 4], [1, 0], [2, 0], [4, 0]]))
    _STORE_COLS = gl.constexpr(_quarter_layout([[0, 1], [8, 0], [0, 2], [0, 4], [0, 32], [0, 64]],
                                               [[0, 8], [0, 16], [1, 0], [2, 0], [4, 0]]))
    _STORE_QUARTER = gl.constexpr(_quarter_layout([[0, 1], [0, 2], [0, 4], [8, 0], [0, 32], [0, 64]],
                                                  [[0, 8], [0, 16], [1, 0], [2, 0], [4, 0]]))
    #: A split's fp32 partials: 4 consecutive columns a thread (a 16-byte store), a lane quad's 16 columns a row's 64
    #: contiguous bytes. Eight columns a thread would put a warp's 16-byte stores 32 bytes apart (half sectors; H200,
    #: the split kernel 4.6 us longer at b 1-16 than the accumulator's 8-byte stores, which fill whole 32-byte
    #: sectors); this is ``_STORE_STEP`` (one shuffle step) with its registers renamed.
    _STORE_PARTIAL = gl.constexpr(_quarter_layout([[0, 1], [0, 2], [8, 0], [0, 16], [0, 32], [0, 64]],
                                                  [[0, 8], [0, 4], [1, 0], [2, 0], [4, 0]]))

    def _chunk_layout(reg_bases, lane_bases):
        """:func:`_quarter_layout` for a [64, 64] chunk of an output half (the three-warpgroup form's): the same
        bases less the register bit of column 64."""
        return gl.DistributedLinearLayout(reg_bases=reg_bases, lane_bases=lane_bases, warp_bases=[[16, 0], [32, 0]],
                                          block_bases=[], shape=[64, 64])

    #: :data:`_STORE_STEP`, :data:`_STORE_COLS`, :data:`_STORE_QUARTER` and :data:`_STORE_PARTIAL` for a chunk
    _STORE_CHUNK_STEP = gl.constexpr(_chunk_layout([[0, 1], [8, 0], [0, 2], [0, 16], [0, 32]],
                                                   [[0, 8], [0, 4], [1, 0], [2, 0], [4, 0]]))
    _STORE_CHUNK_COLS = gl.constexpr(_chunk_layout([[0, 1], [8, 0], [0, 2], [0, 4], [0, 32]],
                                                   [[0, 8], [0, 16], [1, 0], [2, 0], [4, 0]]))
    _STORE_CHUNK = gl.constexpr(_chunk_layout([[0, 1], [0, 2], [0, 4], [8, 0], [0, 32]],
                                              [[0, 8], [0, 16], [1, 0], [2, 0], [4, 0]]))
    _STORE_CHUNK_PARTIAL = gl.constexpr(_chunk_layout([[0, 1], [0, 2], [8, 0], [0, 16], [0, 32]],
                                                      [[0, 8], [0, 4], [1, 0], [2, 0], [4, 0]]))

    @gluon.jit
    def _tiles_of(tok_lo, tok_hi, BLOCK_N: gl.constexpr):
        """KV tiles a partition walks for one request: at least one (a fully masked tile when empty)."""
        return gl.maximum(gl.cdiv(tok_hi - tok_lo, BLOCK_N), 1)

    @gluon.jit
    def _load_rows(src_row, dst_lo, dst_hi, dst_pe, mask, D_V: gl.constexpr, D_PE: gl.constexpr,
                   LOAD: gl.constexpr):
        """cp.async 64-column chunks of rows ``src_row`` (pointers, [64] in ``LOAD``'s row slice): dims
        ``[0, D_V/2)`` to ``dst_lo``, ``[D_V/2, D_V)`` to ``dst_hi``, the RoPE dims to ``dst_pe``. Masked
        rows are zero-filled and not read."""
        HALF: gl.constexpr = D_V // 2
        offs_c = gl.arange(0, 64, layout=gl.SliceLayout(0, LOAD))
        for c in gl.static_range(HALF // 64):
            async_copy.async_copy_global_to_shared(dst_lo.slice(c * 64, 64, dim=1),
                                                   src_row[:, None] + c * 64 + offs_c[None, :], mask=mask[:, None])
            async_copy.async_copy_global_to_shared(dst_hi.slice(c * 64, 64, dim=1),
                                                   src_row[:, None] + HALF + c * 64 + offs_c[None, :],
                                                   mask=mask[:, None])
        if D_PE > 0:
            async_copy.async_copy_global_to_shared(dst_pe, src_row[:, None] + D_V + offs_c[None, :],
                                                   mask=mask[:, None])

    @gluon.jit
    def _stamp(trace_ptr, kb, EVENT: gl.constexpr, TRACE: gl.constexpr, PARTITION_WARPS: gl.constexpr):
        """The trace build (``TRACE``): this SM's cycle counter when the calling partition reaches ``EVENT`` of
        its ``kb``-th tile, written to ``trace_ptr`` (the first :data:`TRACE_PIECES` rows of :func:`trace_buffer`'s
        int64 [rows, TRACE_TILES, TRACE_EVENTS]) by the programs of row tile 0 and pieces below
        :data:`TRACE_PIECES` (tiles past :data:`TRACE_TILES` overwrite the last). All partitions of a program share
        an SM, so their stamps compare. Nothing otherwise."""
        if TRACE:
            piece = gl.program_id(1)
            if (gl.program_id(0) == 0) & (piece < _TRACE_PIECES):
                ONE: gl.constexpr = gl.BlockedLayout([1], [32], [PARTITION_WARPS], [0])
                kb_t = gl.full([1], 0, gl.int32, layout=ONE) + kb
                now = gl.inline_asm_elementwise("mov.u64 $0, %clock64;", "=l,r", [kb_t], dtype=gl.int64,
                                                is_pure=False, pack=1)
                slot = (piece * _TRACE_TILES + gl.minimum(kb_t, _TRACE_TILES - 1)) * _TRACE_EVENTS + EVENT
                gl.store(trace_ptr + slot, now)

    @gluon.jit
    def _stamp_program(trace_ptr, WHICH: gl.constexpr, TRACE: gl.constexpr, PARTITION_WARPS: gl.constexpr):
        """The trace build (``TRACE``): ``%globaltimer`` (ns) written to the calling program's slot ``WHICH`` (0 its
        entry, 1 its end) in the rows after the pieces' (:data:`TRACE_PROGRAM_ROWS`). Nothing otherwise."""
        if TRACE:
            program = gl.program_id(1) * gl.num_programs(0) + gl.program_id(0)
            if program < _TRACE_PROGRAMS:
                ONE: gl.constexpr = gl.BlockedLayout([1], [32], [PARTITION_WARPS], [0])
                program_t = gl.full([1], 0, gl.int32, layout=ONE) + program
                now = gl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l,r", [program_t], dtype=gl.int64,
                                                is_pure=False, pack=1)
                gl.store(trace_ptr + _TRACE_PROGRAM_BASE + program_t * 2 + WHICH, now)

    @gluon.jit
    def _copy_slots(bt_row, start, tok_hi, slots_s, BLOCK_N: gl.constexpr, PARTITION_WARPS: gl.constexpr):
        """``cp.async`` a tile's list entries ``bt_row[start ..]`` ([BLOCK_N] int32; those at or past ``tok_hi``
        zero-filled, masked by the softmax anyway) into ``slots_s``, in the loader's copies of the tile, so they
        land and are published with it: the softmax warpgroup masks the keys outside the cache from these.
        It had loaded them from global memory itself, a latency in its loop that the score products did not
        hide (40 us of 221 at V3.2 b=64 h_q=128 with the loader's reads and decode ablated, H200)."""
        SLOTS: gl.constexpr = gl.BlockedLayout([1], [32], [PARTITION_WARPS], [0])
        offs = start + gl.arange(0, BLOCK_N, layout=SLOTS)
        async_copy.async_copy_global_to_shared(slots_s, bt_row + offs, mask=offs < tok_hi)

    @gluon.jit
    def _publish(bar, ASYNC_ARRIVE: gl.constexpr):
        """Signal ``bar`` when this partition's cp.async copies have landed.

        ``ASYNC_ARRIVE``: every thread arrives through ``cp.async.mbarrier.arrive.noinc`` (the barrier counts
        the partition's threads) and goes on, so the next stage's copies can be issued at once; the consumer
        fences before its tensor-core reads. Otherwise the partition waits for its copies (``wait_group``
        tracks committed copies only: commit first), fences, and one thread arrives.
        """
        if ASYNC_ARRIVE:
            async_copy.mbarrier_arrive(bar, increment_count=False)
        else:
            async_copy.commit_group()
            async_copy.wait_group(0)
            fence_async_shared()
            gl.thread_barrier()
            mbarrier.arrive(bar, count=1)

    @gluon.jit
    def _acquire(bar, phase, ASYNC_ARRIVE: gl.constexpr):
        """Wait for data the loader published on ``bar``; with ``ASYNC_ARRIVE`` the copies were not fenced
        by their writers, so fence here before the tensor cores read them."""
        mbarrier.wait(bar, phase)
        if ASYNC_ARRIVE:
            fence_async_shared()

    @gluon.jit
    def _box_bar(k_ready, stage, c: gl.constexpr, K_BOXES: gl.constexpr, BOX_ALLOCS: gl.constexpr):
        """The ready barrier of box ``c`` of K ``stage``: ``k_ready`` is one allocation of ``2 * K_BOXES`` barriers,
        or with ``BOX_ALLOCS`` a tuple of ``K_BOXES`` allocations of 2 (one per box, the stage indexed at run time):
        the shared-memory barrier analysis at lowering puts a ``bar.sync`` of the partition between two accesses to
        one allocation, so one allocation per box leaves consecutive boxes' waits without one."""
        if BOX_ALLOCS:
            return k_ready[c].index(stage)
        else:
            return k_ready.index(stage * K_BOXES + c)

    @gluon.jit
    def _loader(q_ptr, k_ptr, block_table_ptr, seqlens_ptr, sched_ptr, num_splits_ptr,
                stride_qb, stride_qs, stride_qh, stride_kb, stride_kp, stride_kh, stride_bt,
                group, rows, row_tiles, page_block_size, max_blocks, num_blocks,
                q_lo, q_hi, q_pe, k_lo, k_hi, k_pe, p_smem, a_smem, bars, k_desc, slots,
                BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, D_V: gl.constexpr, D_PE: gl.constexpr,
                PARTITION_WARPS: gl.constexpr, ASYNC_ARRIVE: gl.constexpr, TMA_K: gl.constexpr,
                K_BOXES: gl.constexpr, SPARSE: gl.constexpr, KV_FP8: gl.constexpr, PREFETCH_L2: gl.constexpr,
                KV_E4M3: gl.constexpr, Q_E4M3: gl.constexpr, LIST_AHEAD: gl.constexpr, trace_ptr,
                TRACE: gl.constexpr, BOX_ALLOCS: gl.constexpr, dec, OUTPUT_DECODE: gl.constexpr, lag=None,
                LAG: gl.constexpr = False, k_half_desc=None, LAG_HALVES: gl.constexpr = False):
        """Loader partition: each request's Q tile, then its K tiles into the two-stage ring.

        ``TMA_K``: a whole tile (64 keys inside one page) comes as 64x64 TMA boxes of ``k_desc`` (the cache
        as [pages * page_block_size, d]) counted in bytes on its mbarrier; a request's last, partial tile
        (and the one masked tile of an empty request) still comes by ``cp.async`` with its missing rows
        zero-filled, since a box would bring the page's unused slots (NaN allowed there) into ``P V``.

        ``K_BOXES`` > 1 (with ``TMA_K``): each 64-column box completes on a barrier of its own (``k_ready`` holds
        ``K_BOXES`` per stage), so the score products start on the first box landed; a ``cp.async`` tile
        arrives on all of them.

        ``SPARSE``: a request's "block table" row is its list of cache slots (``page * page_block_size +
        offset``, token-sparse decoding): each key row comes from its own slot, and a slot outside the cache
        (``-1`` or any other) is not read (zero-filled; the softmax warpgroup masks it). Over 16-bit caches the
        tile's entries also go to ``slots`` (stage ``kb % 2``, :func:`_copy_slots`) with its copies, for that
        mask; over FP8 records the softmax warpgroup reads them from the list itself (:func:`_softmax_only`).

        ``KV_FP8`` (with ``SPARSE``): the cache holds V3.2 FP8 records (656 bytes a key, ``k_ptr`` bytes); each
        tile is gathered and dequantized into the stage by :func:`_gather_fp8_tile`, or with ``OUTPUT_DECODE``
        only gathered (:func:`_issue_fp8_halves`), its copies arriving on ``dec`` (a barrier a stage) as they
        land, and decoded by the output warpgroups (:func:`_decode_own_half`).

        ``KV_E4M3`` (dense): the cache holds per-tensor e4m3 codes (``d`` bytes a key, ``k_ptr`` bytes); each tile
        is copied and decoded, unscaled (exactly), into the stage by :func:`_gather_e4m3_tile`.

        ``LIST_AHEAD`` (with ``SPARSE`` or ``KV_E4M3``): each tile's list (or block-table) entries are loaded a
        tile ahead, when the tile before is issued, so a tile's copies do not wait for that load.

        ``LAG``: a stage's left value half comes free (``k_free``) before its right half and RoPE box (``lag[0]``,
        the right output warpgroup being a tile behind): a TMA tile's left boxes are issued on the first, the rest on
        the second; a ``cp.async`` tile waits for both."""
        q_ready, q_free, k_ready, k_free, p_ready, p_free = bars
        LOAD: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [PARTITION_WARPS, 1], [1, 0])
        pid_m = gl.program_id(0)
        kv_head = pid_m // row_tiles
        tile = pid_m % row_tiles
        begin_req, begin_tok, end_req, end_tok, begin_split = _piece_bounds(sched_ptr, gl.program_id(1))
        offs_r = tile * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, LOAD))
        offs_t = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, LOAD))
        # the layout of a tile's key rows where the tile's entries are read: the decoding loaders' or the copies'
        CVT: gl.constexpr = gl.BlockedLayout([1, 16], [8, 4], [PARTITION_WARPS, 1], [1, 0])
        if KV_FP8 or KV_E4M3:
            ENTRY: gl.constexpr = gl.SliceLayout(1, CVT)
        else:
            ENTRY: gl.constexpr = gl.SliceLayout(1, LOAD)
        offs_e = gl.arange(0, BLOCK_N, layout=ENTRY)
        kb = 0
        for req in range(begin_req, end_req + 1):
            req64 = req.to(gl.int64)
            rq = req - begin_req
            s_k, tok_lo, tok_hi, split_lo, n_split, split_idx = _request_span(
                req, begin_req, begin_tok, end_req, end_tok, begin_split, seqlens_ptr, num_splits_ptr, max_blocks,
                page_block_size)
            _load_q(q_ptr, req64, offs_r, group, kv_head, rows, stride_qb, stride_qs, stride_qh, q_lo, q_hi, q_pe,
                    q_ready, q_free, rq, D_V, D_PE, LOAD, ASYNC_ARRIVE, Q_E4M3)

            bt_row = block_table_ptr + req64 * stride_bt
            if LIST_AHEAD:
                ent_next = _key_entries(bt_row, tok_lo + offs_e, tok_hi, page_block_size, SPARSE)
            for it in range(0, _tiles_of(tok_lo, tok_hi, BLOCK_N)):
                stage = kb % 2
                mbarrier.wait(k_free.index(stage), ((kb // 2) & 1) ^ 1)
                _stamp(trace_ptr, kb, 0, TRACE, PARTITION_WARPS)
                start = tok_lo + it * BLOCK_N
                if LAG:
                    if not (TMA_K and start + BLOCK_N <= tok_hi):  # a cp.async tile needs the whole stage
                        mbarrier.wait(lag[0].index(stage), ((kb // 2) & 1) ^ 1)
                if LIST_AHEAD:  # this tile's entries were loaded with the last; load the next tile's now
                    ent = ent_next
                    ent_next = _key_entries(bt_row, start + BLOCK_N + offs_e, tok_hi, page_block_size, SPARSE)
                if TMA_K and start + BLOCK_N <= tok_hi:
                    page_id = gl.load(bt_row + start // page_block_size)
                    page_id = gl.minimum(gl.maximum(page_id, 0), num_blocks - 1)
                    if LAG:
                        _tma_tile_lag(k_desc, page_id * page_block_size + start % page_block_size, k_lo, k_hi,
                                      k_pe.index(stage), k_ready, stage, lag[0].index(stage), ((kb // 2) & 1) ^ 1,
                                      D_V, BOX_ALLOCS, k_half_desc, LAG_HALVES)
                    else:
                        _tma_tile(k_desc, page_id * page_block_size + start % page_block_size, k_lo.index(stage),
                                  k_hi.index(stage), k_pe.index(stage), k_ready, stage, D_V, D_PE, K_BOXES,
                                  BOX_ALLOCS)
                elif KV_E4M3:
                    if not LIST_AHEAD:
                        ent = _key_entries(bt_row, start + offs_e, tok_hi, page_block_size, False)
                    _gather_e4m3_tile(k_ptr, ent, start, tok_hi, page_block_size, num_blocks, stride_kb, stride_kp,
                                      kv_head * stride_kh, k_lo.index(stage), k_hi.index(stage), k_pe.index(stage),
                                      k_hi, k_pe, stage, D_V, PARTITION_WARPS)
                    mbarrier.arrive(k_ready.index(stage), count=1)
                elif KV_FP8 and OUTPUT_DECODE:
                    if not LIST_AHEAD:
                        ent = _key_entries(bt_row, start + offs_e, tok_hi, page_block_size, True)
                    _issue_fp8_halves(k_ptr, ent, start, tok_hi, page_block_size, num_blocks, stride_kb, stride_kp,
                                      k_lo, k_hi, k_pe, stage, D_V, PARTITION_WARPS)
                    # each thread's copies arrive as they land; the loader goes on to the next stage at once
                    async_copy.mbarrier_arrive(dec.index(stage), increment_count=False)
                elif KV_FP8:
                    if not LIST_AHEAD:
                        ent = _key_entries(bt_row, start + offs_e, tok_hi, page_block_size, True)
                    _gather_fp8_tile(k_ptr, ent, bt_row, start, tok_hi, page_block_size, num_blocks, stride_kb,
                                     stride_kp, k_lo.index(stage), k_hi.index(stage), k_pe.index(stage), k_hi, k_pe, stage,
                                     D_V, PARTITION_WARPS, PREFETCH_L2, kb, trace_ptr, TRACE)
                    mbarrier.arrive(k_ready.index(stage), count=1)
                else:
                    offs_j = start + offs_t
                    mask_j = offs_j < tok_hi
                    if SPARSE:
                        if LIST_AHEAD:
                            slot = ent
                        else:
                            slot = gl.load(bt_row + offs_j, mask=mask_j, other=-1)
                        page = slot // page_block_size
                        mask_j = mask_j & (slot >= 0) & (page < num_blocks)
                        page = gl.where(mask_j, page, 0)
                        k_row = k_ptr + (page.to(gl.int64) * stride_kb
                                         + gl.where(mask_j, slot % page_block_size, 0) * stride_kp
                                         + kv_head * stride_kh)
                    else:
                        page = gl.load(bt_row + offs_j // page_block_size, mask=mask_j, other=0)
                        # garbage past the length is never used
                        page = gl.minimum(gl.maximum(page, 0), num_blocks - 1)
                        k_row = k_ptr + (page.to(gl.int64) * stride_kb + (offs_j % page_block_size) * stride_kp
                                         + kv_head * stride_kh)
                    _load_rows(k_row, k_lo.index(stage), k_hi.index(stage), k_pe.index(stage), mask_j, D_V, D_PE,
                               LOAD)
                    if SPARSE:
                        _copy_slots(bt_row, start, tok_hi, slots.index(stage), BLOCK_N, PARTITION_WARPS)
                    # with TMA tiles each barrier counts one arrival (and bytes), so this tile arrives once too
                    if K_BOXES == 1:
                        _publish(k_ready.index(stage), ASYNC_ARRIVE and not TMA_K)
                    else:
                        _publish(_box_bar(k_ready, stage, 0, K_BOXES, BOX_ALLOCS), False)
                        for c in gl.static_range(1, K_BOXES):
                            mbarrier.arrive(_box_bar(k_ready, stage, c, K_BOXES, BOX_ALLOCS), count=1)
                _stamp(trace_ptr, kb, 1, TRACE, PARTITION_WARPS)  # published (decoded tiles) or issued
                kb += 1

    @gluon.jit
    def _gather_fp8_tile(k_ptr, slot, bt_row, start, tok_hi, page_block_size, num_blocks, stride_kb, stride_kp,
                         k_lo_s, k_hi_s, k_pe_s, k_hi, k_pe, stage, D_V: gl.constexpr,
                         PARTITION_WARPS: gl.constexpr, PREFETCH: gl.constexpr, kb, trace_ptr, TRACE: gl.constexpr):
        """One tile of 64 keys from a V3.2 FP8 cache into a 16-bit K stage (``k_lo_s``/``k_hi_s``/``k_pe_s``).

        Each key's record is 656 bytes: e4m3 codes of dims 0..511, four fp32 scales (scale ``t`` covers dims
        ``128t ..``), 64 bf16 RoPE dims. Slots ``bt_row[start ..]`` (``slot``, read by :func:`_key_entries`)
        outside the cache or past ``tok_hi`` are not read (codes and scales zero, so the key is 0; the softmax
        warpgroup masks it).

        There is no room for a staging buffer beside the two bf16 stages and Q (224.8 of 227 KB), so the
        codes land (``cp.async``, :func:`_issue_code_tile`) in the stage's upper half and are decoded there
        in place (:func:`_decode_code_blocks`). The loader waits for them before decoding: one tile in flight.
        Issuing the next tile's copies (into the other stage) before this decode measured slower, as that stage
        is freed only once the consumers are done with the tile before (module docstring).

        ``PREFETCH``: while this tile's copies are in flight, the records of the request's next tile are asked
        into L2 (``cp.async.bulk.prefetch.L2``, one per key), so that tile's gather waits on L2, not HBM: the
        loader cannot copy it any earlier, as its stage is still being read.
        """
        CVT: gl.constexpr = gl.BlockedLayout([1, 16], [8, 4], [PARTITION_WARPS, 1], [1, 0])  # 16 B a thread
        offs_j = start + gl.arange(0, 64, layout=gl.SliceLayout(1, CVT))
        rec, mask_j = _slot_records(k_ptr, slot, offs_j, tok_hi, page_block_size, num_blocks, stride_kb, stride_kp)
        sc0, sc1, sc2, sc3 = _issue_code_tile(rec, mask_j, k_hi, k_pe, stage, D_V, PARTITION_WARPS, True)
        if PREFETCH:
            _prefetch_records(k_ptr, bt_row, offs_j + 64, tok_hi, page_block_size, num_blocks, stride_kb, stride_kp,
                              D_V + 16 + 128)
        async_copy.wait_group(0)
        gl.thread_barrier()  # every thread's codes have landed
        _stamp(trace_ptr, kb, 7, TRACE, PARTITION_WARPS)
        _decode_code_tile(k_lo_s, k_hi_s, k_pe_s, k_hi, k_pe, stage, sc0, sc1, sc2, sc3, D_V, PARTITION_WARPS, True)
        fence_async_shared()  # the tensor cores read the stage next
        gl.thread_barrier()

    @gluon.jit
    def _copy_v32_rope(rec, mask_j, k_pe_s, D_V: gl.constexpr, PARTITION_WARPS: gl.constexpr):
        """``cp.async`` the 64 bf16 RoPE dims of V3.2 records ``rec`` (byte pointers [64]; ``mask_j``: which to
        read, the others zero-filled) into a stage's RoPE slot ``k_pe_s`` [64, 64]."""
        ROPE: gl.constexpr = gl.BlockedLayout([1, 8], [8, 4], [PARTITION_WARPS, 1], [1, 0])
        rec_pe = gl.convert_layout(rec, gl.SliceLayout(1, ROPE))
        mask_pe = gl.convert_layout(mask_j, gl.SliceLayout(1, ROPE))
        pe_ptr = (rec_pe + D_V + 16).to(gl.pointer_type(gl.bfloat16))  # after the codes and the four fp32 scales
        offs_e = gl.arange(0, 64, layout=gl.SliceLayout(0, ROPE))
        async_copy.async_copy_global_to_shared(k_pe_s, pe_ptr[:, None] + offs_e[None, :], mask=mask_pe[:, None])

    @gluon.jit
    def _issue_fp8_halves(k_ptr, slot, start, tok_hi, page_block_size, num_blocks, stride_kb, stride_kp,
                          k_lo, k_hi, k_pe, stage, D_V: gl.constexpr, PARTITION_WARPS: gl.constexpr):
        """Issue the ``cp.async`` copies of one tile of 64 V3.2 FP8 records (``slot``: their list entries, from
        :func:`_key_entries`; keys outside the cache or at or past ``tok_hi`` zero-filled) for the output
        warpgroups to decode (:func:`_decode_own_half`). Into each value half's 16-bit buffer of ``stage``
        (``k_lo``, ``k_hi``: 32 KB, each 64-column block its own 8 KB) go that half's codes (dims ``256h ..``) as
        four [64, 64] byte blocks in its upper 16 KB, and its two fp32 scales (``2h``, ``2h + 1``) as two rows
        of 64 at byte 8192 (:func:`_scale_rows`; no room is left beside the ring for them); the bf16 RoPE dims
        go to the stage's RoPE slot. The caller arrives on the tile's barrier after them."""
        CVT: gl.constexpr = gl.BlockedLayout([1, 16], [8, 4], [PARTITION_WARPS, 1], [1, 0])  # 16 B a thread
        SCALES: gl.constexpr = gl.BlockedLayout([1], [32], [PARTITION_WARPS], [0])  # a scale row, 4 B a key
        CODES: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, order=[1, 0])
        HALF_BLOCKS: gl.constexpr = D_V // 128  # 64-code blocks a value half
        BLOCKS: gl.constexpr = 2 * HALF_BLOCKS  # 4 KB chunks of a half's 16-bit buffer
        offs_j = start + gl.arange(0, 64, layout=gl.SliceLayout(1, CVT))
        rec, mask_j = _slot_records(k_ptr, slot, offs_j, tok_hi, page_block_size, num_blocks, stride_kb, stride_kp)
        lo = k_lo._reinterpret(gl.uint8, [k_lo.shape[0] * BLOCKS, 64, 64], CODES)
        hi = k_hi._reinterpret(gl.uint8, [k_hi.shape[0] * BLOCKS, 64, 64], CODES)
        offs_c = gl.arange(0, 64, layout=gl.SliceLayout(0, CVT))
        for c in gl.static_range(HALF_BLOCKS):
            async_copy.async_copy_global_to_shared(lo.index(stage * BLOCKS + HALF_BLOCKS + c),
                                                   rec[:, None] + c * 64 + offs_c[None, :], mask=mask_j[:, None])
        for c in gl.static_range(HALF_BLOCKS):
            async_copy.async_copy_global_to_shared(hi.index(stage * BLOCKS + HALF_BLOCKS + c),
                                                   rec[:, None] + (HALF_BLOCKS + c) * 64 + offs_c[None, :],
                                                   mask=mask_j[:, None])
        _copy_v32_rope(rec, mask_j, k_pe.index(stage), D_V, PARTITION_WARPS)
        sc_ptr = (gl.convert_layout(rec, SCALES) + D_V).to(gl.pointer_type(gl.float32))
        mask_s = gl.convert_layout(mask_j, SCALES)
        for t in gl.static_range(2):
            async_copy.async_copy_global_to_shared(_scale_rows(k_lo).index(stage * 128 + 32 + t), sc_ptr + t,
                                                   mask=mask_s)
            async_copy.async_copy_global_to_shared(_scale_rows(k_hi).index(stage * 128 + 32 + t), sc_ptr + 2 + t,
                                                   mask=mask_s)

    @gluon.jit
    def _scale_rows(v_half):
        """A value half's 16-bit K ring ([2, 64, 256]) as fp32 rows of 64 ([256, 64]): row ``128 stage + 32 + t``
        (byte 8192 of the stage's buffer, inside its second 64-column block) holds the half's scale ``t`` of each
        key until the decode overwrites it."""
        return v_half._reinterpret(gl.float32, [v_half.shape[0] * 128, 64], gl.SwizzledSharedLayout(1, 1, 1, order=[0]))

    @gluon.jit
    def _decode_own_half(v_half, codes_ready, k_ready, kb, D_V: gl.constexpr, PARTITION_WARPS: gl.constexpr):
        """An output warpgroup decodes its value half of K tile ``kb`` (stage ``kb % 2``) in place, once the
        tile's copies have landed (:func:`_issue_fp8_halves`), and arrives on the tile's ready barrier (which
        counts both output warpgroups): :func:`_decode_first_blocks` then :func:`_decode_last_blocks`, the
        scale that outlives its bytes handed from one to the other."""
        sc_b = _decode_first_blocks(v_half, codes_ready, kb, D_V, PARTITION_WARPS)
        _decode_last_blocks(v_half, k_ready, kb, sc_b, D_V, PARTITION_WARPS)

    @gluon.jit
    def _decode_first_blocks(v_half, codes_ready, kb, D_V: gl.constexpr, PARTITION_WARPS: gl.constexpr):
        """The first two 64-column blocks of this warpgroup's half of tile ``kb`` (``v_half``: its half of the K
        ring, 16-bit [2, 64, D_V/2]), once the tile's copies have landed; returns the scale of the last two
        (its bytes are overwritten here), [64] fp32, for :func:`_decode_last_blocks`.

        Each 64-column 16-bit block is its own 8 KB; code block ``c`` is 4 KB at byte ``16K + 4K c`` and the
        scales lie at byte 8K. The scales are read and block 0 written into free bytes; block 1 (over the scales)
        only after a barrier of this warpgroup, by which every thread has read them and code blocks 0-1. No other
        partition touches these bytes before the tile is ready."""
        dtype: gl.constexpr = v_half.dtype
        CVT: gl.constexpr = gl.BlockedLayout([1, 16], [8, 4], [PARTITION_WARPS, 1], [1, 0])  # 16 B a thread
        CODES: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, order=[1, 0])
        HALF_BLOCKS: gl.constexpr = D_V // 128
        gl.static_assert(HALF_BLOCKS == 4, "the in-place order is written for 256-dim value halves")
        stage = kb % 2
        mbarrier.wait(codes_ready.index(stage), (kb // 2) & 1)
        codes = v_half._reinterpret(gl.uint8, [v_half.shape[0] * 2 * HALF_BLOCKS, 64, 64], CODES)
        base = stage * 2 * HALF_BLOCKS + HALF_BLOCKS
        dst = v_half.index(stage)
        sc_a = _scale_rows(v_half).index(stage * 128 + 32).load(gl.SliceLayout(1, CVT))
        sc_b = _scale_rows(v_half).index(stage * 128 + 33).load(gl.SliceLayout(1, CVT))
        dst.slice(0, 64, dim=1).store(_dequant(codes.index(base + 0).load(CVT), sc_a, dtype))
        c1 = codes.index(base + 1).load(CVT)
        gl.thread_barrier()  # the scales and code blocks 0-1 read by the whole warpgroup
        dst.slice(64, 64, dim=1).store(_dequant(c1, sc_a, dtype))
        return sc_b

    @gluon.jit
    def _decode_last_blocks(v_half, k_ready, kb, sc_b, D_V: gl.constexpr, PARTITION_WARPS: gl.constexpr):
        """The last two blocks of this warpgroup's half of tile ``kb`` (after :func:`_decode_first_blocks` by the
        same threads): block 2 overwrites code blocks 0-1; block 3 is read into registers and written after a
        barrier, once block 2's codes are read too. Then the tile's ready barrier gets this warpgroup's arrival."""
        dtype: gl.constexpr = v_half.dtype
        CVT: gl.constexpr = gl.BlockedLayout([1, 16], [8, 4], [PARTITION_WARPS, 1], [1, 0])  # 16 B a thread
        CODES: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, order=[1, 0])
        HALF_BLOCKS: gl.constexpr = D_V // 128
        stage = kb % 2
        codes = v_half._reinterpret(gl.uint8, [v_half.shape[0] * 2 * HALF_BLOCKS, 64, 64], CODES)
        base = stage * 2 * HALF_BLOCKS + HALF_BLOCKS
        dst = v_half.index(stage)
        dst.slice(128, 64, dim=1).store(_dequant(codes.index(base + 2).load(CVT), sc_b, dtype))
        c3 = codes.index(base + 3).load(CVT)
        gl.thread_barrier()  # code blocks 2-3 read
        dst.slice(192, 64, dim=1).store(_dequant(c3, sc_b, dtype))
        fence_async_shared()  # the tensor cores read the stage next
        gl.thread_barrier()
        mbarrier.arrive(k_ready.index(stage), count=1)

    @gluon.jit
    def _gather_e4m3_tile(k_ptr, page, start, tok_hi, page_block_size, num_blocks, stride_kb, stride_kp, head_off,
                          k_lo_s, k_hi_s, k_pe_s, k_hi, k_pe, stage, D_V: gl.constexpr, PARTITION_WARPS: gl.constexpr):
        """One tile of 64 keys from a per-tensor FP8 cache (e4m3 codes of all ``D_V + 64`` dims, one scale for
        the tensor, applied by the softmax warpgroup) into a 16-bit K stage, each code decoded exactly.

        ``page``: the keys' block-table entries (:func:`_key_entries`). Keys at or past ``tok_hi`` are not read
        (zero-filled). As in :func:`_gather_fp8_tile` the codes of
        dims ``0 .. D_V`` land in the stage's upper half and are decoded in place; the RoPE codes land in the
        first half of the stage's RoPE slot (:func:`_issue_code_tile`). One tile in flight.
        """
        CVT: gl.constexpr = gl.BlockedLayout([1, 16], [8, 4], [PARTITION_WARPS, 1], [1, 0])  # 16 B a thread
        offs_j = start + gl.arange(0, 64, layout=gl.SliceLayout(1, CVT))
        rec, mask_j = _page_records(k_ptr, page, offs_j, tok_hi, page_block_size, num_blocks, stride_kb, stride_kp,
                                    head_off)
        sc0, sc1, sc2, sc3 = _issue_code_tile(rec, mask_j, k_hi, k_pe, stage, D_V, PARTITION_WARPS, False)
        async_copy.wait_group(0)
        gl.thread_barrier()  # every thread's codes have landed
        _decode_code_tile(k_lo_s, k_hi_s, k_pe_s, k_hi, k_pe, stage, sc0, sc1, sc2, sc3, D_V, PARTITION_WARPS,
                          False)
        fence_async_shared()  # the tensor cores read the stage next
        gl.thread_barrier()

    @gluon.jit
    def _page_records(k_ptr, page, offs_j, tok_hi, page_block_size, num_blocks, stride_kb, stride_kp, head_off):
        """Byte pointers to the keys ``offs_j`` of a request (``page``: their block-table entries, from
        :func:`_key_entries`) and which are before ``tok_hi`` (the others point into a valid page, never read)."""
        mask_j = offs_j < tok_hi
        page = gl.minimum(gl.maximum(page, 0), num_blocks - 1)  # garbage past the length is never used
        rec = k_ptr + (page.to(gl.int64) * stride_kb + (offs_j % page_block_size) * stride_kp + head_off)
        return rec, mask_j

    @gluon.jit
    def _issue_code_tile(rec, mask_j, k_hi, k_pe, stage, D_V: gl.constexpr, PARTITION_WARPS: gl.constexpr,
                         V32: gl.constexpr):
        """Issue (and commit as one group) the ``cp.async`` copies of one tile of FP8 keys (``rec``: byte
        pointers [64], ``mask_j``: which to read; the others are zero-filled) into K stage ``stage``.

        The codes of dims ``0 .. D_V`` land in the stage's upper half (``k_hi.index(stage)``), whose 32 KB hold
        exactly 64 keys x 512 codes, as eight [64, 64] byte blocks, block ``c`` (dims ``64c ..``) at byte
        ``4096c``. ``V32``: 656-byte V3.2 records; the bf16 RoPE dims go straight to the stage's RoPE slot, and
        the four fp32 scales are loaded (returned, [64] each, zero for keys not read; their latency is the
        caller's to hide). Else per-tensor e4m3 keys: the RoPE codes land in the first half of the stage's RoPE
        slot (``k_pe``), and the returned scales are ones."""
        CVT: gl.constexpr = gl.BlockedLayout([1, 16], [8, 4], [PARTITION_WARPS, 1], [1, 0])  # 16 B a thread
        CODES: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, order=[1, 0])
        BLOCKS: gl.constexpr = D_V // 64
        codes = k_hi._reinterpret(gl.uint8, [k_hi.shape[0] * BLOCKS, 64, 64], CODES)  # [stage * 8 + block, key, code]
        offs_c = gl.arange(0, 64, layout=gl.SliceLayout(0, CVT))
        for c in gl.static_range(BLOCKS):
            async_copy.async_copy_global_to_shared(codes.index(stage * BLOCKS + c),
                                                   rec[:, None] + c * 64 + offs_c[None, :], mask=mask_j[:, None])
        if V32:
            _copy_v32_rope(rec, mask_j, k_pe.index(stage), D_V, PARTITION_WARPS)
            async_copy.commit_group()
            # the scales while the codes are in flight (zero for keys not read)
            sc_ptr = (rec + D_V).to(gl.pointer_type(gl.float32))
            sc0 = gl.load(sc_ptr, mask=mask_j, other=0.0)
            sc1 = gl.load(sc_ptr + 1, mask=mask_j, other=0.0)
            sc2 = gl.load(sc_ptr + 2, mask=mask_j, other=0.0)
            sc3 = gl.load(sc_ptr + 3, mask=mask_j, other=0.0)
        else:
            pe_codes = k_pe._reinterpret(gl.uint8, [k_pe.shape[0] * 2, 64, 64], CODES)  # half a RoPE slot a tile
            async_copy.async_copy_global_to_shared(pe_codes.index(stage * 2), rec[:, None] + D_V + offs_c[None, :],
                                                   mask=mask_j[:, None])
            async_copy.commit_group()
            ones = gl.full([64], 1.0, gl.float32, layout=gl.SliceLayout(1, CVT))
            sc0, sc1, sc2, sc3 = ones, ones, ones, ones
        return sc0, sc1, sc2, sc3

    @gluon.jit
    def _decode_code_tile(k_lo_s, k_hi_s, k_pe_s, k_hi, k_pe, stage, sc0, sc1, sc2, sc3, D_V: gl.constexpr,
                          PARTITION_WARPS: gl.constexpr, V32: gl.constexpr):
        """Decode the landed codes of K stage ``stage`` (:func:`_issue_code_tile`; every thread's copies done
        and a partition barrier passed) into its 16-bit buffers ``k_lo_s``/``k_hi_s``/``k_pe_s`` in place: V3.2
        codes times their scales (``sc{t}`` [64] for dims ``128t ..``), e4m3 codes exactly (and the RoPE codes
        too). The caller fences and barriers before publishing."""
        dtype: gl.constexpr = k_lo_s.dtype
        CVT: gl.constexpr = gl.BlockedLayout([1, 16], [8, 4], [PARTITION_WARPS, 1], [1, 0])  # 16 B a thread
        CODES: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, order=[1, 0])
        BLOCKS: gl.constexpr = D_V // 64
        codes = k_hi._reinterpret(gl.uint8, [k_hi.shape[0] * BLOCKS, 64, 64], CODES)
        if V32:
            _decode_code_blocks(k_lo_s, k_hi_s, codes, stage * BLOCKS, sc0, sc1, sc2, sc3, CVT, True)
        else:
            pe_codes = k_pe._reinterpret(gl.uint8, [k_pe.shape[0] * 2, 64, 64], CODES)
            pe = pe_codes.index(stage * 2).load(CVT)  # read by all before the decode's first barrier, then overwritten
            _decode_code_blocks(k_lo_s, k_hi_s, codes, stage * BLOCKS, sc0, sc1, sc2, sc3, CVT, False)
            k_pe_s.store(_e4m3_exact(pe, dtype))

    @gluon.jit
    def _decode_code_blocks(k_lo_s, k_hi_s, codes, base, sc0, sc1, sc2, sc3, CVT: gl.constexpr,
                            SCALED: gl.constexpr):
        """Decode a K stage's eight [64, 64] code blocks (``codes.index(base + c)``, dims ``64c ..``, lying in
        the stage's upper half) into its two 16-bit halves in place: with ``SCALED`` block ``c``'s codes times
        each key's scale ``sc{c // 2}`` ([64] fp32), else exactly. The caller fences after.

        The order never overwrites codes not yet read: an NVMMA [64, 256] 16-bit buffer keeps each 64-column
        block in its own 8 KB, so dims ``256 + 64i ..`` land on the bytes of code blocks ``2i, 2i+1``. Blocks
        0-3 go to the lower half; after a partition barrier blocks 4-5 overwrite code blocks 0-3; after
        another, blocks 6-7 are read whole into registers before a third barrier lets them overwrite code
        blocks 4-7."""
        dtype: gl.constexpr = k_lo_s.dtype
        k_lo_s.slice(0, 64, dim=1).store(_code_values(codes.index(base + 0).load(CVT), sc0, dtype, SCALED))
        k_lo_s.slice(64, 64, dim=1).store(_code_values(codes.index(base + 1).load(CVT), sc0, dtype, SCALED))
        k_lo_s.slice(128, 64, dim=1).store(_code_values(codes.index(base + 2).load(CVT), sc1, dtype, SCALED))
        k_lo_s.slice(192, 64, dim=1).store(_code_values(codes.index(base + 3).load(CVT), sc1, dtype, SCALED))
        gl.thread_barrier()  # code blocks 0-3 read
        k_hi_s.slice(0, 64, dim=1).store(_code_values(codes.index(base + 4).load(CVT), sc2, dtype, SCALED))
        k_hi_s.slice(64, 64, dim=1).store(_code_values(codes.index(base + 5).load(CVT), sc2, dtype, SCALED))
        gl.thread_barrier()  # code blocks 4-5 read
        c6 = codes.index(base + 6).load(CVT)
        c7 = codes.index(base + 7).load(CVT)
        gl.thread_barrier()  # code blocks 6-7 read
        k_hi_s.slice(128, 64, dim=1).store(_code_values(c6, sc3, dtype, SCALED))
        k_hi_s.slice(192, 64, dim=1).store(_code_values(c7, sc3, dtype, SCALED))

    @gluon.jit
    def _code_values(codes, scale, dtype: gl.constexpr, SCALED: gl.constexpr):
        """e4m3 codes as ``dtype``: times ``scale`` (one per row) with ``SCALED``, else exactly."""
        if SCALED:
            return _dequant(codes, scale, dtype)
        else:
            return _e4m3_exact(codes, dtype)

    @gluon.jit
    def _e4m3_scales(scale_log2, descale_k_ptr, descale_q_ptr, KV_E4M3: gl.constexpr, Q_E4M3: gl.constexpr):
        """``(score scale, V scale)`` over per-tensor FP8 codes: the scores take ``descale_k`` (and ``descale_q``
        for an e4m3 q), ``P V`` takes ``descale_k``; ``(scale_log2, 1)`` over 16-bit keys. The descales are read
        on the device, so no host sync, and CUDA graphs replay new ones."""
        v_scale = 1.0
        if KV_E4M3:
            v_scale = gl.load(descale_k_ptr)
            scale_log2 = scale_log2 * v_scale
        if Q_E4M3:
            scale_log2 = scale_log2 * gl.load(descale_q_ptr)
        return scale_log2, v_scale

    @gluon.jit
    def _e4m3_exact(codes, dtype: gl.constexpr):
        """e4m3 codes (uint8) as ``dtype`` values, exactly (every e4m3 value is a bf16 and an fp16)."""
        return codes.to(gl.float8e4nv, bitcast=True).to(gl.float32).to(dtype)

    @gluon.jit
    def _key_entries(bt_row, offs_j, tok_hi, page_block_size, SPARSE: gl.constexpr):
        """What locates keys ``offs_j`` of a request: with ``SPARSE`` their list entries (slots; -1 at or past
        ``tok_hi``), else their block-table entries (pages; 0 at or past ``tok_hi``). int32, ``offs_j``'s layout."""
        mask_j = offs_j < tok_hi
        if SPARSE:
            return gl.load(bt_row + offs_j, mask=mask_j, other=-1)
        else:
            return gl.load(bt_row + offs_j // page_block_size, mask=mask_j, other=0)

    @gluon.jit
    def _slot_records(k_ptr, slot, offs_j, tok_hi, page_block_size, num_blocks, stride_kb, stride_kp):
        """Byte pointers to the records of list entries ``offs_j`` (``< tok_hi``; ``slot``: their entries, from
        :func:`_key_entries`) and which are in the cache."""
        mask_j = offs_j < tok_hi
        page = slot // page_block_size
        mask_j = mask_j & (slot >= 0) & (page < num_blocks)
        rec = k_ptr + (gl.where(mask_j, page, 0).to(gl.int64) * stride_kb
                       + gl.where(mask_j, slot % page_block_size, 0) * stride_kp)
        return rec, mask_j

    @gluon.jit
    def _prefetch_records(k_ptr, bt_row, offs_j, tok_hi, page_block_size, num_blocks, stride_kb, stride_kp,
                          RECORD: gl.constexpr):
        """Ask L2 for the ``RECORD``-byte records of list entries ``offs_j`` (those in the cache)."""
        gl.static_assert(RECORD == 656, "the prefetch's size is the V3.2 record's")
        slot = _key_entries(bt_row, offs_j, tok_hi, page_block_size, True)
        rec, mask_j = _slot_records(k_ptr, slot, offs_j, tok_hi, page_block_size, num_blocks, stride_kb, stride_kp)
        gl.inline_asm_elementwise(
            "{ .reg .pred p; setp.ne.b32 p, $2, 0; @p cp.async.bulk.prefetch.L2.global [$1], 656; mov.u32 $0, 0; }",
            "=r,l,r", [rec, mask_j.to(gl.int32)], dtype=gl.int32, is_pure=False, pack=1)

    @gluon.jit
    def _dequant(codes, scale, dtype: gl.constexpr):
        """``dtype(fp32(e4m3 codes) * scale)`` (the V3.2 rule with q's dtype; bf16 as FlashMLA), ``scale`` one per
        row."""
        return (codes.to(gl.float8e4nv, bitcast=True).to(gl.float32) * scale[:, None]).to(dtype)

    @gluon.jit
    def _load_q(q_ptr, req64, offs_r, group, kv_head, rows, stride_qb, stride_qs, stride_qh, q_lo, q_hi, q_pe,
                q_ready, q_free, rq, D_V: gl.constexpr, D_PE: gl.constexpr, LOAD: gl.constexpr,
                ASYNC_ARRIVE: gl.constexpr, Q_E4M3: gl.constexpr):
        """Q rows ``offs_r`` (the request's s_q * group rows of this KV head, folded) of request ``req64``, the
        ``rq``-th of this piece, once the softmax warpgroup is done with the last request's."""
        mbarrier.wait(q_free, (rq & 1) ^ 1)
        q_row = q_ptr + req64 * stride_qb + (offs_r // group) * stride_qs + (kv_head * group + offs_r % group) * stride_qh
        if Q_E4M3:
            # e4m3 codes (bytes), decoded exactly to the 16-bit type of Q's buffers through registers
            dtype: gl.constexpr = q_lo.dtype
            HALF: gl.constexpr = D_V // 2
            mask = (offs_r < rows)[:, None]
            offs_c = gl.arange(0, 64, layout=gl.SliceLayout(0, LOAD))
            for c in gl.static_range(HALF // 64):
                lo = gl.load(q_row[:, None] + c * 64 + offs_c[None, :], mask=mask, other=0)
                q_lo.slice(c * 64, 64, dim=1).store(_e4m3_exact(lo, dtype))
                hi = gl.load(q_row[:, None] + HALF + c * 64 + offs_c[None, :], mask=mask, other=0)
                q_hi.slice(c * 64, 64, dim=1).store(_e4m3_exact(hi, dtype))
            if D_PE > 0:
                pe = gl.load(q_row[:, None] + D_V + offs_c[None, :], mask=mask, other=0)
                q_pe.store(_e4m3_exact(pe, dtype))
        else:
            _load_rows(q_row, q_lo, q_hi, q_pe, offs_r < rows, D_V, D_PE, LOAD)
        _publish(q_ready, ASYNC_ARRIVE)

    @gluon.jit
    def _tma_tile(k_desc, row, dst_lo, dst_hi, dst_pe, k_ready, stage, D_V: gl.constexpr, D_PE: gl.constexpr,
                  BOXES: gl.constexpr, BOX_ALLOCS: gl.constexpr):
        """One K tile (rows ``row .. row+63`` of ``k_desc``) as 64x64 TMA boxes into ``stage``: all on its one
        ready barrier (``BOXES`` 1), or box ``c`` (columns ``64c ..``, in the order the score products read
        them) on barrier ``stage * BOXES + c``."""
        HALF: gl.constexpr = D_V // 2
        BOX_BYTES: gl.constexpr = 64 * 64 * 2  # 16-bit keys
        if BOXES == 1:
            bar = k_ready.index(stage)
            mbarrier.expect(bar, (D_V + D_PE) * 64 * 2)
            for c in gl.static_range(HALF // 64):
                tma.async_copy_global_to_shared(k_desc, [row, c * 64], bar, dst_lo.slice(c * 64, 64, dim=1))
                tma.async_copy_global_to_shared(k_desc, [row, HALF + c * 64], bar, dst_hi.slice(c * 64, 64, dim=1))
            if D_PE > 0:
                tma.async_copy_global_to_shared(k_desc, [row, D_V], bar, dst_pe)
        else:
            for c in gl.static_range(HALF // 64):
                bar = _box_bar(k_ready, stage, c, BOXES, BOX_ALLOCS)
                mbarrier.expect(bar, BOX_BYTES)
                tma.async_copy_global_to_shared(k_desc, [row, c * 64], bar, dst_lo.slice(c * 64, 64, dim=1))
            for c in gl.static_range(HALF // 64):
                bar = _box_bar(k_ready, stage, HALF // 64 + c, BOXES, BOX_ALLOCS)
                mbarrier.expect(bar, BOX_BYTES)
                tma.async_copy_global_to_shared(k_desc, [row, HALF + c * 64], bar, dst_hi.slice(c * 64, 64, dim=1))
            if D_PE > 0:
                bar = _box_bar(k_ready, stage, D_V // 64, BOXES, BOX_ALLOCS)
                mbarrier.expect(bar, BOX_BYTES)
                tma.async_copy_global_to_shared(k_desc, [row, D_V], bar, dst_pe)

    @gluon.jit
    def _tma_tile_lag(k_desc, row, k_lo, k_hi, dst_pe, k_ready, stage, free_hi, free_hi_phase,
                      D_V: gl.constexpr, BOX_ALLOCS: gl.constexpr, k_half_desc, LAG_HALVES: gl.constexpr):
        """:func:`_tma_tile` (a box a barrier) for ``LAG``: the left value half's four boxes at once (its half of the
        stage is free), the right half's and the RoPE box once ``free_hi`` reaches ``free_hi_phase`` (the right output
        warpgroup, a tile behind, is done with them and with the P it read from the RoPE slot). ``LAG_HALVES``: each
        value half as one box of ``k_half_desc`` (:func:`tma_chunks_view`) on its first chunk's barrier."""
        HALF: gl.constexpr = D_V // 2
        BOX_BYTES: gl.constexpr = 64 * 64 * 2
        dst_lo = k_lo.index(stage)
        dst_hi = k_hi.index(stage)
        if LAG_HALVES:
            # each value half's ring seen as [2, HALF / 64, 64, 64]: the same bytes, since a 128-byte swizzled
            # [64, HALF] tile keeps each 64-column chunk as a contiguous 8 KB block
            BOX_SMEM: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=3)
            lo = k_lo._reinterpret(k_lo.dtype, [2, HALF // 64, 64, 64], BOX_SMEM)
            hi = k_hi._reinterpret(k_hi.dtype, [2, HALF // 64, 64, 64], BOX_SMEM)
            bar = _box_bar(k_ready, stage, 0, 9, BOX_ALLOCS)
            mbarrier.expect(bar, HALF // 64 * BOX_BYTES)
            tma.async_copy_global_to_shared(k_half_desc, [0, row, 0], bar, lo.index(stage))
            mbarrier.wait(free_hi, free_hi_phase)
            bar = _box_bar(k_ready, stage, HALF // 64, 9, BOX_ALLOCS)
            mbarrier.expect(bar, HALF // 64 * BOX_BYTES)
            tma.async_copy_global_to_shared(k_half_desc, [HALF // 64, row, 0], bar, hi.index(stage))
            bar = _box_bar(k_ready, stage, D_V // 64, 9, BOX_ALLOCS)
            mbarrier.expect(bar, BOX_BYTES)
            tma.async_copy_global_to_shared(k_desc, [row, D_V], bar, dst_pe)
            return
        for c in gl.static_range(HALF // 64):
            bar = _box_bar(k_ready, stage, c, 9, BOX_ALLOCS)
            mbarrier.expect(bar, BOX_BYTES)
            tma.async_copy_global_to_shared(k_desc, [row, c * 64], bar, dst_lo.slice(c * 64, 64, dim=1))
        mbarrier.wait(free_hi, free_hi_phase)
        for c in gl.static_range(HALF // 64):
            bar = _box_bar(k_ready, stage, HALF // 64 + c, 9, BOX_ALLOCS)
            mbarrier.expect(bar, BOX_BYTES)
            tma.async_copy_global_to_shared(k_desc, [row, HALF + c * 64], bar, dst_hi.slice(c * 64, 64, dim=1))
        bar = _box_bar(k_ready, stage, D_V // 64, 9, BOX_ALLOCS)
        mbarrier.expect(bar, BOX_BYTES)
        tma.async_copy_global_to_shared(k_desc, [row, D_V], bar, dst_pe)

    @gluon.jit
    def _output_half(out_ptr, o_acc_ptr, seqlens_ptr, sched_ptr, num_splits_ptr,
                     stride_ob, stride_os, stride_oh,
                     s_q, h_q, group, rows, row_tiles, page_block_size, max_blocks,
                     v_half, p_smem, a_smem, bars,
                     COL0: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, D_V: gl.constexpr,
                     PARTITION_WARPS: gl.constexpr, ASYNC_ARRIVE: gl.constexpr):
        """Output partition: ``O[:, COL0:COL0+D_V/2] += P V[:, COL0:COL0+D_V/2]`` per KV tile (``v_half`` is
        that half of the K ring), rescaled by the published factor; the last round publishes ``1/l``
        instead, and this half is stored."""
        q_ready, q_free, k_ready, k_free, p_ready, p_free = bars
        HALF: gl.constexpr = D_V // 2
        O_LAYOUT: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[PARTITION_WARPS, 1],
                                                           instr_shape=[16, HALF, 16])
        ROW_O: gl.constexpr = gl.SliceLayout(1, O_LAYOUT)
        kv_head, begin_req, begin_tok, end_req, end_tok, begin_split, offs_r, _ = _output_rows(
            sched_ptr, row_tiles, COL0, HALF, BLOCK_M, O_LAYOUT)
        kb = 0
        pr = 0
        for req in range(begin_req, end_req + 1):
            req64 = req.to(gl.int64)
            s_k, tok_lo, tok_hi, split_lo, n_split, split_idx = _request_span(
                req, begin_req, begin_tok, end_req, end_tok, begin_split, seqlens_ptr, num_splits_ptr, max_blocks,
                page_block_size)
            acc = gl.zeros([BLOCK_M, HALF], gl.float32, layout=O_LAYOUT)
            for it in range(0, _tiles_of(tok_lo, tok_hi, BLOCK_N)):
                stage = kb % 2
                _acquire(p_ready, pr & 1, ASYNC_ARRIVE)  # V came from the loader through the softmax warpgroup
                alpha = a_smem.load(ROW_O)
                acc = acc * alpha[:, None]
                acc = warpgroup_mma(p_smem, v_half.index(stage), acc, is_async=True)
                acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
                _release(p_free, k_free.index(stage))
                kb += 1
                pr += 1
            inv_l = _final_factor(p_ready, p_free, a_smem, pr & 1, ROW_O)
            pr += 1
            _store_half(acc * inv_l[:, None], offs_r, out_ptr, o_acc_ptr, req64, kv_head, group, rows, s_q, h_q,
                        n_split, split_lo, split_idx, stride_ob, stride_os, stride_oh, COL0, D_V)

    @gluon.jit
    def _release(p_free, k_free_stage):
        """An output warpgroup is done with this tile's P and V: one thread arrives for all four warps."""
        gl.thread_barrier()
        mbarrier.arrive(p_free, count=1)
        mbarrier.arrive(k_free_stage, count=1)

    @gluon.jit
    def _final_factor(p_ready, p_free, a_smem, phase, ROW_O: gl.constexpr):
        """The last round of a request: each row's ``1/l`` (0 for a row that saw no key) from ``a_smem`` once
        ``p_ready`` reaches ``phase``, read by every thread before the buffer is handed back."""
        mbarrier.wait(p_ready, phase)
        inv_l = a_smem.load(ROW_O)
        gl.thread_barrier()
        mbarrier.arrive(p_free, count=1)
        return inv_l

    @gluon.jit
    def _output_rows(sched_ptr, row_tiles, COL0: gl.constexpr, WIDTH: gl.constexpr, BLOCK_M: gl.constexpr,
                     O_LAYOUT: gl.constexpr):
        """An output warpgroup's program: its KV head, its piece's bounds (:func:`_piece_bounds`), its query rows
        and its first ``WIDTH`` output columns from ``COL0`` (in the accumulator layout ``O_LAYOUT``)."""
        pid_m = gl.program_id(0)
        kv_head = pid_m // row_tiles
        tile = pid_m % row_tiles
        begin_req, begin_tok, end_req, end_tok, begin_split = _piece_bounds(sched_ptr, gl.program_id(1))
        offs_r = tile * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, O_LAYOUT))
        offs_v = COL0 + gl.arange(0, WIDTH, layout=gl.SliceLayout(0, O_LAYOUT))
        return kv_head, begin_req, begin_tok, end_req, end_tok, begin_split, offs_r, offs_v

    @gluon.jit
    def _pv_quarters(p_buf, v, alpha, acc_a, acc_b, QUARTER: gl.constexpr):
        """Rescale a value half's two accumulators by ``alpha`` (per row) and issue ``P V`` on each quarter of
        ``v`` ([BLOCK_N, 2 QUARTER]); the caller waits for them."""
        acc_a = acc_a * alpha[:, None]
        acc_b = acc_b * alpha[:, None]
        acc_a = warpgroup_mma(p_buf, v.slice(0, QUARTER, dim=1), acc_a, is_async=True)
        acc_b = warpgroup_mma(p_buf, v.slice(QUARTER, QUARTER, dim=1), acc_b, is_async=True)
        return acc_a, acc_b

    @gluon.jit
    def _store_quarters(acc_a, acc_b, inv_l, offs_r, out_ptr, o_acc_ptr, req64, kv_head, group, rows, s_q, h_q,
                        n_split, split_lo, split_idx, stride_ob, stride_os, stride_oh, COL0: gl.constexpr,
                        D_V: gl.constexpr):
        """Store a value half kept as two [64, 128] quarter accumulators (columns ``COL0 ..`` and ``COL0 + D_V/4 ..``),
        normalised by ``inv_l``, each first laid out for 16-byte stores: :data:`_STORE_QUARTER` to ``out`` (a request
        in one piece), :data:`_STORE_PARTIAL` to the split's ``o_accum`` slot."""
        gl.static_assert(acc_a.shape[0] == 64 and acc_a.shape[1] == D_V // 4 and D_V == 512,
                         "quarters of 64 rows and 128 columns")
        for q in gl.static_range(2):
            acc = acc_a if q == 0 else acc_b
            o = gl.convert_layout(acc * inv_l[:, None], _STORE_STEP)
            if n_split <= 1:
                S: gl.constexpr = _STORE_QUARTER
                _store_out(gl.convert_layout(gl.convert_layout(o, _STORE_COLS), S),
                           gl.convert_layout(offs_r, gl.SliceLayout(1, S)),  # rows stay where they were: no move
                           COL0 + q * (D_V // 4) + gl.arange(0, D_V // 4, layout=gl.SliceLayout(0, S)), out_ptr,
                           req64, kv_head, group, rows, stride_ob, stride_os, stride_oh)
            else:
                P: gl.constexpr = _STORE_PARTIAL
                _store_partial(gl.convert_layout(o, P), gl.convert_layout(offs_r, gl.SliceLayout(1, P)),
                               COL0 + q * (D_V // 4) + gl.arange(0, D_V // 4, layout=gl.SliceLayout(0, P)),
                               o_acc_ptr, kv_head, group, rows, s_q, h_q, split_lo, split_idx, D_V)

    @gluon.jit
    def _store_half(o, offs_r, out_ptr, o_acc_ptr, req64, kv_head, group, rows, s_q, h_q, n_split, split_lo,
                    split_idx, stride_ob, stride_os, stride_oh, COL0: gl.constexpr, D_V: gl.constexpr):
        """Store a normalised [64, D_V/2] output half (columns ``COL0 ..``, fp32 ``o`` in the ``wgmma`` accumulator
        layout of the three-warpgroup form) in four [64, 64] chunks, each laid out for 16-byte stores first
        (:data:`_STORE_CHUNK`): columns 64 and 128 are register bits of that layout, so cutting the chunks moves
        nothing, and a chunk's conversion holds a quarter of the registers a whole half's would."""
        gl.static_assert(o.shape[0] == 64 and o.shape[1] == D_V // 2 and D_V == 512, "a half of 64 rows, 256 columns")
        # [64, 256] as [row, column bit 128, column bit 64, column % 64], the bits moved last to split them off
        lo64, hi64 = gl.split(gl.permute(gl.reshape(o, [64, 2, 2, 64]), [0, 3, 1, 2]))
        c0, c2 = gl.split(lo64)
        c1, c3 = gl.split(hi64)
        rows_c = gl.convert_layout(offs_r, gl.SliceLayout(1, c0.type.layout))
        for c in gl.static_range(4):
            chunk = c0 if c == 0 else c1 if c == 1 else c2 if c == 2 else c3
            chunk = gl.convert_layout(chunk, _STORE_CHUNK_STEP)
            if n_split <= 1:
                S: gl.constexpr = _STORE_CHUNK
                _store_out(gl.convert_layout(gl.convert_layout(chunk, _STORE_CHUNK_COLS), S),
                           gl.convert_layout(rows_c, gl.SliceLayout(1, S)),
                           COL0 + c * 64 + gl.arange(0, 64, layout=gl.SliceLayout(0, S)), out_ptr,
                           req64, kv_head, group, rows, stride_ob, stride_os, stride_oh)
            else:
                P: gl.constexpr = _STORE_CHUNK_PARTIAL
                _store_partial(gl.convert_layout(chunk, P), gl.convert_layout(rows_c, gl.SliceLayout(1, P)),
                               COL0 + c * 64 + gl.arange(0, 64, layout=gl.SliceLayout(0, P)),
                               o_acc_ptr, kv_head, group, rows, s_q, h_q, split_lo, split_idx, D_V)

    @gluon.jit
    def _store_out(o, offs_r, offs_v, out_ptr, req64, kv_head, group, rows, stride_ob, stride_os, stride_oh):
        """Normalised output columns ``offs_v`` of rows ``offs_r`` (fp32 ``o``) to ``out`` in its dtype."""
        t_o = offs_r // group
        head_o = kv_head * group + offs_r % group
        o_ptrs = out_ptr + req64 * stride_ob + t_o * stride_os + head_o * stride_oh
        gl.store(o_ptrs[:, None] + offs_v[None, :], o.to(out_ptr.dtype.element_ty), mask=(offs_r < rows)[:, None])

    @gluon.jit
    def _store_partial(o, offs_r, offs_v, o_acc_ptr, kv_head, group, rows, s_q, h_q, split_lo, split_idx,
                       D_V: gl.constexpr):
        """Normalised output columns ``offs_v`` of rows ``offs_r`` (fp32 ``o``) to this split's ``o_accum`` slot
        ([slots, s_q, h_q, D_V])."""
        t_o = offs_r // group
        head_o = kv_head * group + offs_r % group
        acc_row = ((split_lo + split_idx).to(gl.int64) * s_q + t_o) * h_q + head_o
        gl.store(o_acc_ptr + acc_row[:, None] * D_V + offs_v[None, :], o, mask=(offs_r < rows)[:, None])

    @gluon.jit
    def _store_columns(o, offs_r, offs_v, out_ptr, o_acc_ptr, req64, kv_head, group, rows, s_q, h_q, n_split,
                       split_lo, split_idx, stride_ob, stride_os, stride_oh, D_V: gl.constexpr):
        """Store normalised output columns ``offs_v`` of rows ``offs_r`` (fp32 ``o``): to ``out`` in its dtype
        when the request is not split, else to this split's ``o_accum`` slot."""
        if n_split <= 1:
            _store_out(o, offs_r, offs_v, out_ptr, req64, kv_head, group, rows, stride_ob, stride_os, stride_oh)
        else:
            _store_partial(o, offs_r, offs_v, o_acc_ptr, kv_head, group, rows, s_q, h_q, split_lo, split_idx, D_V)

    @gluon.jit
    def _output_quarters(out_ptr, o_acc_ptr, seqlens_ptr, sched_ptr, num_splits_ptr,
                         stride_ob, stride_os, stride_oh,
                         s_q, h_q, group, rows, row_tiles, page_block_size, max_blocks,
                         v_half, p_smem, a_smem, bars,
                         COL0: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, D_V: gl.constexpr,
                         PARTITION_WARPS: gl.constexpr, ASYNC_ARRIVE: gl.constexpr, trace_ptr, TRACE: gl.constexpr,
                         dec, DECODE: gl.constexpr, a_ready=None, P_HALVES: gl.constexpr = False, k_pe=None,
                         lag=None, LAG: gl.constexpr = False):
        """:func:`_output_half` as two N=D_V/4 products with an accumulator each: with four warpgroups the
        launch cap is 128 registers a thread, and ``ptxas`` fits every instruction under that cap, so a single
        N=256 product (154 registers) does not compile even where the partition's own limit is 168. Kept
        beside :func:`_output_half` rather than replacing it: the three-warpgroup form was measured with one
        N=256 product, and two would read P from shared memory twice; merging them waits for a GPU A/B.

        ``DECODE`` (V3.2 FP8 records, ``dec`` the barriers their copies land on): this warpgroup decodes its half of each
        tile (:func:`_decode_own_half`): the piece's first tile before the loop, then tile ``kb + 1`` while tile
        ``kb``'s products run, so the softmax warpgroup's next scores wait for a decode that overlapped them.
        (Starting the first two blocks of tile ``kb + 1`` before waiting for tile ``kb``'s ``P`` instead measured
        slower: module docstring.)

        ``P_HALVES`` (:func:`_softmax_halves`): each tile's rescale factor comes on ``a_ready`` and the accumulators
        are rescaled while ``P`` is computed; the products on the first 32 keys are issued when that half of ``P``
        lands (``p_ready[0]``), the last 32 keys' on ``p_ready[1]``.

        ``LAG``: tile ``k``'s P is in its stage's RoPE slot (``k_pe``) and its factor in ``lag[3]``, published on
        ``lag[1]`` (a barrier a stage); the right warpgroup (``COL0 > 0``) issues tile ``k``'s products only once the
        softmax warpgroup has issued tile ``k + 1``'s scores (``lag[2]``), so they run under its softmax; each
        warpgroup frees its own half of the stage (the right one the RoPE slot too); the last round's ``1/l`` comes
        through ``a_smem`` on ``p_ready`` / ``p_free``."""
        q_ready, q_free, k_ready, k_free, p_ready, p_free = bars
        QUARTER: gl.constexpr = D_V // 4
        O_LAYOUT: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[PARTITION_WARPS, 1],
                                                           instr_shape=[16, QUARTER, 16])
        ROW_O: gl.constexpr = gl.SliceLayout(1, O_LAYOUT)
        kv_head, begin_req, begin_tok, end_req, end_tok, begin_split, offs_r, offs_v = _output_rows(
            sched_ptr, row_tiles, COL0, QUARTER, BLOCK_M, O_LAYOUT)
        kb = 0
        pr = 0
        if DECODE:
            if begin_req <= end_req:  # the piece's first tile
                _decode_own_half(v_half, dec, k_ready, 0, D_V, PARTITION_WARPS)
                _stamp(trace_ptr, 0, 7, TRACE, PARTITION_WARPS)
        for req in range(begin_req, end_req + 1):
            req64 = req.to(gl.int64)
            s_k, tok_lo, tok_hi, split_lo, n_split, split_idx = _request_span(
                req, begin_req, begin_tok, end_req, end_tok, begin_split, seqlens_ptr, num_splits_ptr, max_blocks,
                page_block_size)
            acc_a = gl.zeros([BLOCK_M, QUARTER], gl.float32, layout=O_LAYOUT)
            acc_b = gl.zeros([BLOCK_M, QUARTER], gl.float32, layout=O_LAYOUT)
            n_tiles = _tiles_of(tok_lo, tok_hi, BLOCK_N)
            for it in range(0, n_tiles):
                stage = kb % 2
                has_next = (it + 1 < n_tiles) | (req < end_req)  # a tile after this one in the piece
                if LAG:
                    _acquire(lag[1].index(stage), (kb // 2) & 1, ASYNC_ARRIVE)  # P and the factor (V: as below)
                    if COL0 > 0:  # a tile behind: the next scores are in the tensor cores' queue first
                        mbarrier.wait(lag[2], kb & 1)
                    _stamp(trace_ptr, kb, 5, TRACE, PARTITION_WARPS)
                    acc_a, acc_b = _pv_quarters(k_pe.index(stage), v_half.index(stage),
                                                lag[3].index(stage).load(ROW_O), acc_a, acc_b, QUARTER)
                elif P_HALVES:
                    mbarrier.wait(a_ready, kb & 1)
                    alpha = a_smem.load(ROW_O)
                    acc_a = acc_a * alpha[:, None]
                    acc_b = acc_b * alpha[:, None]
                    _acquire(p_ready.index(0), pr & 1, ASYNC_ARRIVE)  # V came from the loader through the softmax WG
                    _stamp(trace_ptr, kb, 5, TRACE, PARTITION_WARPS)
                    KEYS: gl.constexpr = BLOCK_N // 2
                    v_a = v_half.index(stage).slice(0, KEYS, dim=0)
                    acc_a = warpgroup_mma(p_smem.index(0), v_a.slice(0, QUARTER, dim=1), acc_a, is_async=True)
                    acc_b = warpgroup_mma(p_smem.index(0), v_a.slice(QUARTER, QUARTER, dim=1), acc_b, is_async=True)
                    mbarrier.wait(p_ready.index(1), kb & 1)
                    v_b = v_half.index(stage).slice(KEYS, KEYS, dim=0)
                    acc_a = warpgroup_mma(p_smem.index(1), v_b.slice(0, QUARTER, dim=1), acc_a, is_async=True)
                    acc_b = warpgroup_mma(p_smem.index(1), v_b.slice(QUARTER, QUARTER, dim=1), acc_b, is_async=True)
                else:
                    _acquire(p_ready, pr & 1, ASYNC_ARRIVE)  # V came from the loader through the softmax warpgroup
                    _stamp(trace_ptr, kb, 5, TRACE, PARTITION_WARPS)
                    acc_a, acc_b = _pv_quarters(p_smem, v_half.index(stage), a_smem.load(ROW_O), acc_a, acc_b,
                                                QUARTER)
                if DECODE:  # the next tile (this request's or the next one's) while these products run
                    if has_next:
                        _decode_own_half(v_half, dec, k_ready, kb + 1, D_V, PARTITION_WARPS)
                        _stamp(trace_ptr, kb + 1, 7, TRACE, PARTITION_WARPS)
                acc_a, acc_b = warpgroup_mma_wait(num_outstanding=0, deps=(acc_a, acc_b))
                if LAG:
                    gl.thread_barrier()
                    if COL0 > 0:
                        mbarrier.arrive(lag[0].index(stage), count=1)
                    else:
                        mbarrier.arrive(k_free.index(stage), count=1)
                else:
                    _release(p_free, k_free.index(stage))
                _stamp(trace_ptr, kb, 6, TRACE, PARTITION_WARPS)
                kb += 1
                if not LAG:
                    pr += 1
            if P_HALVES:  # the last round's factor comes on the first half's barrier
                inv_l = _final_factor(p_ready.index(0), p_free, a_smem, pr & 1, ROW_O)
            else:
                inv_l = _final_factor(p_ready, p_free, a_smem, pr & 1, ROW_O)
            pr += 1
            _store_quarters(acc_a, acc_b, inv_l, offs_r, out_ptr, o_acc_ptr, req64, kv_head, group, rows, s_q, h_q,
                            n_split, split_lo, split_idx, stride_ob, stride_os, stride_oh, COL0, D_V)
            _stamp(trace_ptr, kb - 1, 11, TRACE, PARTITION_WARPS)
        _stamp_program(trace_ptr, 1, TRACE, PARTITION_WARPS)  # this program's end (its pieces' last stores issued)

    @gluon.jit
    def _softmax_half(out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr, seqlens_ptr, sched_ptr, num_splits_ptr,
                      stride_ob, stride_os, stride_oh, stride_lb, stride_lh,
                      s_q, h_q, group, rows, row_tiles, page_block_size, max_blocks, scale_log2,
                      q_lo, q_hi, q_pe, k_lo, k_hi, k_pe, p_smem, a_smem, bars,
                      CAUSAL: gl.constexpr, OVERLAP: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                      D_V: gl.constexpr, D_PE: gl.constexpr, PARTITION_WARPS: gl.constexpr,
                      ASYNC_ARRIVE: gl.constexpr, K_BOXES: gl.constexpr, descale_k_ptr, KV_E4M3: gl.constexpr,
                      descale_q_ptr, Q_E4M3: gl.constexpr):
        """Default partition: scores, online softmax, ``P`` and factors to the output warpgroup, the left
        output half, LSE. ``KV_E4M3``: as in :func:`_softmax_only`."""
        q_ready, q_free, k_ready, k_free, p_ready, p_free = bars
        HALF: gl.constexpr = D_V // 2
        dtype: gl.constexpr = p_smem.dtype  # the products' type (fp16 for an e4m3 q, whose output is bf16)
        S_LAYOUT: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[PARTITION_WARPS, 1],
                                                           instr_shape=[16, BLOCK_N, 16])
        O_LAYOUT: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[PARTITION_WARPS, 1],
                                                           instr_shape=[16, HALF, 16])
        ROW_S: gl.constexpr = gl.SliceLayout(1, S_LAYOUT)
        ROW_O: gl.constexpr = gl.SliceLayout(1, O_LAYOUT)
        # score products per tile: one per 256-dim half of the key and one for the RoPE part, or one per box
        QK_GROUPS: gl.constexpr = K_BOXES if K_BOXES > 1 else (3 if D_PE > 0 else 2)
        pid_m = gl.program_id(0)
        kv_head = pid_m // row_tiles
        tile = pid_m % row_tiles
        begin_req, begin_tok, end_req, end_tok, begin_split = _piece_bounds(sched_ptr, gl.program_id(1))
        offs_r_s = tile * BLOCK_M + gl.arange(0, BLOCK_M, layout=ROW_S)
        offs_r_o = tile * BLOCK_M + gl.arange(0, BLOCK_M, layout=ROW_O)
        offs_n = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, S_LAYOUT))
        t_s = offs_r_s // group
        scale_log2, v_scale = _e4m3_scales(scale_log2, descale_k_ptr, descale_q_ptr, KV_E4M3, Q_E4M3)
        kb = 0
        pr = 0
        for req in range(begin_req, end_req + 1):
            req64 = req.to(gl.int64)
            rq = req - begin_req
            s_k, tok_lo, tok_hi, split_lo, n_split, split_idx = _request_span(
                req, begin_req, begin_tok, end_req, end_tok, begin_split, seqlens_ptr, num_splits_ptr, max_blocks,
                page_block_size)
            limit = s_k - s_q + t_s  # [BLOCK_M] last key each row may see (causal)
            n_tiles = _tiles_of(tok_lo, tok_hi, BLOCK_N)
            m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, layout=ROW_S)
            l_i = gl.zeros([BLOCK_M], gl.float32, layout=ROW_S)
            acc = gl.zeros([BLOCK_M, HALF], gl.float32, layout=O_LAYOUT)
            _acquire(q_ready, rq & 1, ASYNC_ARRIVE)

            # tile 0's scores
            stage = kb % 2
            s = _scores_ready(q_lo, q_hi, q_pe, k_lo, k_hi, k_pe, k_ready, stage, (kb // 2) & 1, S_LAYOUT, BLOCK_M,
                              BLOCK_N, D_V, D_PE, K_BOXES, ASYNC_ARRIVE, False)
            s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
            p, alpha, m_i, l_i = _online_softmax(s, m_i, l_i, scale_log2, tok_lo, tok_hi, limit, offs_n, CAUSAL)
            for it in range(0, n_tiles - 1):
                stage = kb % 2
                acc = _hand_over(p, alpha, acc, p_smem, a_smem, p_ready, p_free, pr, ROW_O, dtype)
                pr += 1
                nxt = (kb + 1) % 2
                if OVERLAP:
                    # next scores first: this tile's P V runs on the tensor cores during the next softmax
                    s = _scores_ready(q_lo, q_hi, q_pe, k_lo, k_hi, k_pe, k_ready, nxt, ((kb + 1) // 2) & 1, S_LAYOUT,
                                      BLOCK_M, BLOCK_N, D_V, D_PE, K_BOXES, ASYNC_ARRIVE, False)
                    acc = warpgroup_mma(p_smem, k_lo.index(stage), acc, is_async=True)
                    s = warpgroup_mma_wait(num_outstanding=1, deps=(s,))
                    p, alpha, m_i, l_i = _online_softmax(s, m_i, l_i, scale_log2, tok_lo + (it + 1) * BLOCK_N, tok_hi,
                                                         limit, offs_n, CAUSAL)
                    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
                    gl.thread_barrier()
                    mbarrier.arrive(k_free.index(stage), count=1)
                else:
                    # P V first: the stage is handed back before the next softmax
                    acc = warpgroup_mma(p_smem, k_lo.index(stage), acc, is_async=True)
                    s = _scores_ready(q_lo, q_hi, q_pe, k_lo, k_hi, k_pe, k_ready, nxt, ((kb + 1) // 2) & 1, S_LAYOUT,
                                      BLOCK_M, BLOCK_N, D_V, D_PE, K_BOXES, ASYNC_ARRIVE, False)
                    acc = warpgroup_mma_wait(num_outstanding=QK_GROUPS, deps=(acc,))
                    gl.thread_barrier()
                    mbarrier.arrive(k_free.index(stage), count=1)
                    s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
                    p, alpha, m_i, l_i = _online_softmax(s, m_i, l_i, scale_log2, tok_lo + (it + 1) * BLOCK_N, tok_hi,
                                                         limit, offs_n, CAUSAL)
                kb += 1
            # every score product of this request is done: the loader may bring the next Q
            gl.thread_barrier()
            mbarrier.arrive(q_free, count=1)
            stage = kb % 2
            acc = _hand_over(p, alpha, acc, p_smem, a_smem, p_ready, p_free, pr, ROW_O, dtype)
            pr += 1
            acc = warpgroup_mma(p_smem, k_lo.index(stage), acc, is_async=True)
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
            gl.thread_barrier()
            mbarrier.arrive(k_free.index(stage), count=1)
            kb += 1

            # last round: 1/l to the output warpgroup (0 for a row that saw no key)
            l_o = gl.convert_layout(l_i, ROW_O)
            m_o = gl.convert_layout(m_i, ROW_O)
            empty = l_o == 0.0
            inv_l = gl.where(empty, 0.0, v_scale / l_o)
            mbarrier.wait(p_free, (pr & 1) ^ 1)
            a_smem.store(inv_l)
            gl.thread_barrier()
            mbarrier.arrive(p_ready, count=1)
            pr += 1

            # the LSE first, so that its row values are dead while the output half is converted for its stores
            lse2 = gl.where(empty, float("-inf"), m_o + gl.log2(l_o))
            mask_r = offs_r_o < rows
            t_o = offs_r_o // group
            head_o = kv_head * group + offs_r_o % group
            if n_split <= 1:
                lse = gl.where(empty, float("inf"), lse2 * 0.6931471805599453)
                gl.store(lse_ptr + req64 * stride_lb + head_o * stride_lh + t_o, lse, mask=mask_r)
            else:
                slot = (split_lo + split_idx).to(gl.int64)
                acc_row = (slot * s_q + t_o) * h_q + head_o  # lse_accum is [slots, s_q, h_q]
                gl.store(lse_acc_ptr + acc_row, lse2, mask=mask_r)
            _store_half(acc * inv_l[:, None], offs_r_o, out_ptr, o_acc_ptr, req64, kv_head, group, rows, s_q, h_q,
                        n_split, split_lo, split_idx, stride_ob, stride_os, stride_oh, 0, D_V)

    @gluon.jit
    def _softmax_only(lse_ptr, lse_acc_ptr, seqlens_ptr, sched_ptr, num_splits_ptr, stride_lb, stride_lh,
                      s_q, h_q, group, rows, row_tiles, page_block_size, max_blocks, scale_log2,
                      q_lo, q_hi, q_pe, k_lo, k_hi, k_pe, p_smem, a_smem, bars, slots, block_table_ptr, stride_bt,
                      num_blocks, sink_ptr, descale_k_ptr, descale_q_ptr, lse_s_q,
                      CAUSAL: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, D_V: gl.constexpr,
                      D_PE: gl.constexpr, PARTITION_WARPS: gl.constexpr, ASYNC_ARRIVE: gl.constexpr,
                      K_BOXES: gl.constexpr, SPARSE: gl.constexpr, HAS_SINK: gl.constexpr,
                      KV_E4M3: gl.constexpr, Q_E4M3: gl.constexpr, KV_FP8: gl.constexpr, trace_ptr,
                      TRACE: gl.constexpr, BOX_ALLOCS: gl.constexpr, INTERIOR: gl.constexpr,
                      a_ready=None, P_HALVES: gl.constexpr = False, lag=None, LAG: gl.constexpr = False,
                      LAG_HALVES: gl.constexpr = False):
        """Default partition when two output warpgroups own the halves (``SOFTMAX_ONLY``): scores, online
        softmax, ``P`` and the rescale factor (then ``1/l``) to both, LSE. It holds no output accumulator,
        so tile ``j+1``'s scores and softmax run while the output warpgroups multiply tile ``j``'s ``P`` by V;
        the K stage is handed back by them (this warpgroup's reads of it finished before ``P`` was
        published). ``SPARSE``: keys whose slot is outside the cache get weight 0 (the loader zero-filled them).
        Over 16-bit caches the loader copied each tile's slots into ``slots``; over FP8 records (``KV_FP8``) this
        warpgroup loads them from the list (``block_table_ptr``) while the tile's scores are computed: there
        the loader, which decodes each tile, sets the pace, and the copy in it measured 5 % slower (H200).
        ``HAS_SINK``: ``sink_ptr`` holds an fp32 attention sink per head; a row written straight to ``out`` gets
        its factor folded into the ``1/l`` it publishes (the LSE is unchanged). ``KV_E4M3``: the keys are the
        per-tensor FP8 cache's codes, so the scores are scaled by ``descale_k`` too and the ``1/l`` published
        carries it for ``P V`` (V = descale_k * codes). ``Q_E4M3``: Q holds e4m3 codes too, so the scores take
        ``descale_q`` as well. ``P_HALVES``: each tile is handed over in three steps (:func:`_softmax_halves`):
        ``p_ready`` and ``p_smem`` are then pairs, and ``a_ready`` signals the rescale factor. ``LAG``: each tile's P
        goes into its stage's RoPE slot (dead once its scores are done) and its factor into ``lag[3]``, on ``lag[1]``;
        ``lag[2]`` signals each tile's scores issued (and each request's end), for the right output warpgroup that
        runs a tile behind; only the last round's ``1/l`` goes through ``a_smem``, ``p_ready`` and ``p_free``.
        """
        q_ready, q_free, k_ready, k_free, p_ready, p_free = bars
        S_LAYOUT: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[PARTITION_WARPS, 1],
                                                           instr_shape=[16, BLOCK_N, 16])
        ROWS_1D: gl.constexpr = gl.BlockedLayout([1], [32], [PARTITION_WARPS], [0])
        dtype: gl.constexpr = p_smem.dtype
        kv_head, begin_req, begin_tok, end_req, end_tok, begin_split, offs_r, offs_n, t_s = _softmax_rows(
            sched_ptr, row_tiles, group, BLOCK_M, BLOCK_N, S_LAYOUT, ROWS_1D)
        scale_log2, v_scale = _e4m3_scales(scale_log2, descale_k_ptr, descale_q_ptr, KV_E4M3, Q_E4M3)
        kb = 0
        pr = 0
        for req in range(begin_req, end_req + 1):
            req64 = req.to(gl.int64)
            tok_lo, tok_hi, split_lo, n_split, split_idx, limit, m_i, l_i = _softmax_request(
                req, begin_req, begin_tok, end_req, end_tok, begin_split, seqlens_ptr, num_splits_ptr, max_blocks,
                page_block_size, s_q, t_s, q_ready, BLOCK_M, S_LAYOUT, ASYNC_ARRIVE)
            for it in range(0, _tiles_of(tok_lo, tok_hi, BLOCK_N)):
                stage = kb % 2
                if SPARSE and KV_FP8:  # the tile's slots, loaded while its keys arrive and its scores are computed
                    offs_j = tok_lo + it * BLOCK_N + offs_n
                    slot = gl.load(block_table_ptr + req64 * stride_bt + offs_j, mask=offs_j < tok_hi, other=-1)
                s = _scores_ready(q_lo, q_hi, q_pe, k_lo, k_hi, k_pe, k_ready, stage, (kb // 2) & 1, S_LAYOUT,
                                  BLOCK_M, BLOCK_N, D_V, D_PE, K_BOXES, ASYNC_ARRIVE, BOX_ALLOCS, LAG_HALVES)
                if LAG:
                    if it > 0:  # this tile's scores are queued: the right output warpgroup may issue the last P V
                        mbarrier.arrive(lag[2], count=1)
                _stamp(trace_ptr, kb, 2, TRACE, PARTITION_WARPS)
                if SPARSE and not KV_FP8:  # the tile's slots, landed with its keys, read while its scores run
                    slot = slots.index(stage).load(gl.SliceLayout(0, S_LAYOUT))
                s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
                _stamp(trace_ptr, kb, 3, TRACE, PARTITION_WARPS)
                if SPARSE:
                    named = (slot >= 0) & (slot // page_block_size < num_blocks)
                    s = gl.where(named[None, :], s, float("-inf"))
                if P_HALVES:
                    m_i, l_i = _softmax_halves(s, m_i, l_i, scale_log2, tok_lo + it * BLOCK_N, tok_hi, limit, offs_n,
                                               p_smem, a_smem, p_free, a_ready, p_ready, pr, CAUSAL, INTERIOR,
                                               trace_ptr, kb, TRACE, PARTITION_WARPS)
                    p_ready_now = p_ready.index(1)
                elif LAG:
                    p, alpha, m_i, l_i = _online_softmax(s, m_i, l_i, scale_log2, tok_lo + it * BLOCK_N, tok_hi,
                                                         limit, offs_n, CAUSAL, INTERIOR)
                    _stamp(trace_ptr, kb, 8, TRACE, PARTITION_WARPS)
                    _stamp(trace_ptr, kb, 9, TRACE, PARTITION_WARPS)  # no P buffer to wait for: the trace's 8 -> 9 is 0
                    # the RoPE slot's scores are done (waited above); it is the stage's P until the right output
                    # warpgroup frees the stage's right half
                    k_pe.index(stage).store(p.to(dtype))
                    lag[3].index(stage).store(alpha)
                    p_ready_now = lag[1].index(stage)
                else:
                    p, alpha, m_i, l_i = _online_softmax(s, m_i, l_i, scale_log2, tok_lo + it * BLOCK_N, tok_hi,
                                                         limit, offs_n, CAUSAL, INTERIOR)
                    _stamp(trace_ptr, kb, 8, TRACE, PARTITION_WARPS)
                    mbarrier.wait(p_free, (pr & 1) ^ 1)  # both output warpgroups are done with the last P
                    _stamp(trace_ptr, kb, 9, TRACE, PARTITION_WARPS)
                    p_smem.store(p.to(dtype))
                    # from the softmax's own row layout (a row's four holders write one value): a conversion to a
                    # one-row-a-thread layout first went through scratch shared memory, one more bar.sync a tile
                    a_smem.store(alpha)
                    p_ready_now = p_ready
                fence_async_shared()  # P is read next by the tensor cores
                gl.thread_barrier()
                mbarrier.arrive(p_ready_now, count=1)
                _stamp(trace_ptr, kb, 4, TRACE, PARTITION_WARPS)
                if not LAG:
                    pr += 1
                kb += 1
            if LAG:  # the request's last tile: its right half needs no next scores
                mbarrier.arrive(lag[2], count=1)
            # every score product of this request is done: the loader may bring the next Q
            gl.thread_barrier()
            mbarrier.arrive(q_free, count=1)

            # last round: 1/l to the output warpgroups (0 for a row that saw no key), and the LSE
            empty, lse2, mask_r, t_o, head_o, inv_l = _last_round_rows(l_i, m_i, v_scale, offs_r, rows, group,
                                                                      kv_head, ROWS_1D)
            if HAS_SINK:
                if n_split <= 1:  # split rows get the sink in the combine kernel, from the merged LSE
                    # out *= 1 / (1 + exp(sink - lse)), base 2: a +inf sink gives 0, -inf leaves out as it is
                    sink2 = gl.load(sink_ptr + head_o, mask=mask_r, other=0.0) * 1.4426950408889634
                    inv_l = gl.where(empty, 0.0, inv_l / (1.0 + gl.exp2(sink2 - lse2)))
            if P_HALVES:
                _hand_factor(inv_l, a_smem, p_free, p_ready.index(0), (pr & 1) ^ 1)
            else:
                _hand_factor(inv_l, a_smem, p_free, p_ready, (pr & 1) ^ 1)
            pr += 1
            if SPARSE:  # each query token a request, lse laid out as the call's [b, h_q, s_q] (lse_s_q = s_q)
                _store_lse(lse_ptr, lse_acc_ptr, lse2, empty, mask_r, t_o, head_o, req64, n_split, split_lo,
                           split_idx, s_q, h_q, stride_lb, stride_lh, lse_s_q)
            else:
                _store_lse(lse_ptr, lse_acc_ptr, lse2, empty, mask_r, t_o, head_o, req64, n_split, split_lo,
                           split_idx, s_q, h_q, stride_lb, stride_lh)
            _stamp(trace_ptr, kb - 1, 12, TRACE, PARTITION_WARPS)

    @gluon.jit
    def _softmax_rows(sched_ptr, row_tiles, group, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                      S_LAYOUT: gl.constexpr, ROWS_1D: gl.constexpr):
        """A softmax warpgroup's program (:func:`_softmax_only`, the FP8 kernel's): its KV head, its piece's bounds
        (:func:`_piece_bounds`), its query rows one a thread (``ROWS_1D``), a tile's key offsets and each row's
        query token (both in the score layout ``S_LAYOUT``)."""
        pid_m = gl.program_id(0)
        kv_head = pid_m // row_tiles
        tile = pid_m % row_tiles
        begin_req, begin_tok, end_req, end_tok, begin_split = _piece_bounds(sched_ptr, gl.program_id(1))
        offs_r_s = tile * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, S_LAYOUT))
        offs_r = tile * BLOCK_M + gl.arange(0, BLOCK_M, layout=ROWS_1D)
        offs_n = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, S_LAYOUT))
        t_s = offs_r_s // group
        return kv_head, begin_req, begin_tok, end_req, end_tok, begin_split, offs_r, offs_n, t_s

    @gluon.jit
    def _softmax_request(req, begin_req, begin_tok, end_req, end_tok, begin_split, seqlens_ptr, num_splits_ptr,
                         max_blocks, page_block_size, s_q, t_s, q_ready, BLOCK_M: gl.constexpr,
                         S_LAYOUT: gl.constexpr, ASYNC_ARRIVE: gl.constexpr):
        """A softmax warpgroup starts request ``req`` of its piece: the keys it sees (:func:`_request_span`), each
        row's last visible key (causal), the running max and sum, once the request's Q has landed."""
        rq = req - begin_req
        s_k, tok_lo, tok_hi, split_lo, n_split, split_idx = _request_span(
            req, begin_req, begin_tok, end_req, end_tok, begin_split, seqlens_ptr, num_splits_ptr, max_blocks,
            page_block_size)
        limit = s_k - s_q + t_s  # [BLOCK_M] last key each row may see (causal)
        m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, layout=gl.SliceLayout(1, S_LAYOUT))
        l_i = gl.zeros([BLOCK_M], gl.float32, layout=gl.SliceLayout(1, S_LAYOUT))
        _acquire(q_ready, rq & 1, ASYNC_ARRIVE)
        return tok_lo, tok_hi, split_lo, n_split, split_idx, limit, m_i, l_i

    @gluon.jit
    def _last_round_rows(l_i, m_i, v_scale, offs_r, rows, group, kv_head, ROWS_1D: gl.constexpr):
        """A request's end in a softmax warpgroup, one row a thread: which rows saw no key, their base-2 LSE
        (``-inf`` there), which rows exist, their query token and head, and the ``1/l`` (times ``v_scale``; 0 for
        an empty row) the output warpgroups scale by."""
        l_r = gl.convert_layout(l_i, ROWS_1D)
        m_r = gl.convert_layout(m_i, ROWS_1D)
        empty = l_r == 0.0
        lse2 = gl.where(empty, float("-inf"), m_r + gl.log2(l_r))
        mask_r = offs_r < rows
        t_o = offs_r // group
        head_o = kv_head * group + offs_r % group
        inv_l = gl.where(empty, 0.0, v_scale / l_r)
        return empty, lse2, mask_r, t_o, head_o, inv_l

    @gluon.jit
    def _hand_factor(factor, a_smem, p_free, p_ready, free_phase):
        """Publish a per-row factor (the last round's ``1/l``) in ``a_smem`` once the output warpgroups released
        that buffer (``p_free`` at ``free_phase``), and signal ``p_ready``."""
        mbarrier.wait(p_free, free_phase)
        a_smem.store(factor)
        gl.thread_barrier()
        mbarrier.arrive(p_ready, count=1)

    @gluon.jit
    def _store_lse(lse_ptr, lse_acc_ptr, lse2, empty, mask_r, t_o, head_o, req64, n_split, split_lo, split_idx,
                   s_q, h_q, stride_lb, stride_lh, lse_s_q=1):
        """A request's LSE rows: natural log to ``lse`` (``+inf`` for a row that saw no key, as FlashMLA) when the
        request is not split, else base 2 to this split's ``lse_accum`` slot ([slots, s_q, h_q]). ``lse_s_q``:
        requests sharing an lse row (request ``req``'s at row ``req // lse_s_q``, column ``req % lse_s_q``: the
        sparse launchers' query tokens, each a request, into the call's [b, h_q, s_q]); 1 folds away."""
        if n_split <= 1:
            lse = gl.where(empty, float("inf"), lse2 * 0.6931471805599453)
            req = req64.to(gl.int32)  # an int64 division is a subroutine call: int32 is inlined
            lse_at = lse_ptr + (req // lse_s_q).to(gl.int64) * stride_lb + req % lse_s_q
            gl.store(lse_at + head_o * stride_lh + t_o, lse, mask=mask_r)
        else:
            slot = (split_lo + split_idx).to(gl.int64)
            gl.store(lse_acc_ptr + (slot * s_q + t_o) * h_q + head_o, lse2, mask=mask_r)

    @gluon.jit
    def _scores(q_lo, q_hi, q_pe, k_lo, k_hi, k_pe, S_LAYOUT: gl.constexpr, BLOCK_M: gl.constexpr,
                BLOCK_N: gl.constexpr, D_PE: gl.constexpr):
        """Issue ``S = Q Kᵀ`` [BLOCK_M, BLOCK_N] (fp32, unscaled) as async products; the caller waits."""
        s = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=S_LAYOUT)
        s = warpgroup_mma(q_lo, k_lo.permute((1, 0)), s, use_acc=False, is_async=True)
        s = warpgroup_mma(q_hi, k_hi.permute((1, 0)), s, is_async=True)
        if D_PE > 0:
            s = warpgroup_mma(q_pe, k_pe.permute((1, 0)), s, is_async=True)
        return s

    @gluon.jit
    def _scores_ready(q_lo, q_hi, q_pe, k_lo, k_hi, k_pe, k_ready, stage, phase, S_LAYOUT: gl.constexpr,
                      BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, D_V: gl.constexpr, D_PE: gl.constexpr,
                      K_BOXES: gl.constexpr, ASYNC_ARRIVE: gl.constexpr, BOX_ALLOCS: gl.constexpr,
                      HALF_BOXES: gl.constexpr = False):
        """Wait for K ``stage`` and issue its score products (:func:`_scores`); with ``K_BOXES`` > 1 each
        64-column product waits only for its own box (TMA writes need no fence before the tensor cores, and a
        ``cp.async`` tile was fenced by the loader before it arrived); with ``HALF_BOXES`` a value half is one box,
        on its first chunk's barrier (:func:`_tma_tile_lag`)."""
        if K_BOXES == 1:
            _acquire(k_ready.index(stage), phase, ASYNC_ARRIVE)
            s = _scores(q_lo, q_hi, q_pe, k_lo.index(stage), k_hi.index(stage), k_pe.index(stage), S_LAYOUT,
                        BLOCK_M, BLOCK_N, D_PE)
        else:
            HALF: gl.constexpr = D_V // 2
            CHUNKS: gl.constexpr = HALF // 64
            k_lo_s = k_lo.index(stage)
            k_hi_s = k_hi.index(stage)
            s = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=S_LAYOUT)
            mbarrier.wait(_box_bar(k_ready, stage, 0, K_BOXES, BOX_ALLOCS), phase)
            s = warpgroup_mma(q_lo.slice(0, 64, dim=1), k_lo_s.slice(0, 64, dim=1).permute((1, 0)), s,
                              use_acc=False, is_async=True)
            for c in gl.static_range(1, CHUNKS):
                if not HALF_BOXES:
                    mbarrier.wait(_box_bar(k_ready, stage, c, K_BOXES, BOX_ALLOCS), phase)
                s = warpgroup_mma(q_lo.slice(c * 64, 64, dim=1), k_lo_s.slice(c * 64, 64, dim=1).permute((1, 0)),
                                  s, is_async=True)
            for c in gl.static_range(CHUNKS):
                if not HALF_BOXES or c == 0:
                    mbarrier.wait(_box_bar(k_ready, stage, CHUNKS + c, K_BOXES, BOX_ALLOCS), phase)
                s = warpgroup_mma(q_hi.slice(c * 64, 64, dim=1), k_hi_s.slice(c * 64, 64, dim=1).permute((1, 0)),
                                  s, is_async=True)
            if D_PE > 0:
                mbarrier.wait(_box_bar(k_ready, stage, 2 * CHUNKS, K_BOXES, BOX_ALLOCS), phase)
                s = warpgroup_mma(q_pe, k_pe.index(stage).permute((1, 0)), s, is_async=True)
        return s

    @gluon.jit
    def _softmax_halves(s, m_i, l_i, scale_log2, start, tok_hi, limit, offs_n, p_smem, a_smem, p_free, a_ready,
                        p_ready, pr, CAUSAL: gl.constexpr, INTERIOR: gl.constexpr, trace_ptr, kb,
                        TRACE: gl.constexpr, PARTITION_WARPS: gl.constexpr):
        """:func:`_online_softmax` handed over in three steps (``P_HALVES``): the rescale factor as soon as the max is
        known (``a_smem``, ``a_ready``: the output warpgroups rescale while ``P`` is computed), then ``P`` for the
        tile's first 32 keys (``p_smem[0]``, ``p_ready``: their products start while the second half is
        exponentiated), then for the last 32 (``p_smem[1]``; the caller fences and signals ``p_ready[1]``).
        Returns ``(m_new, l_new)``."""
        BLOCK_M: gl.constexpr = s.shape[0]
        BLOCK_N: gl.constexpr = s.shape[1]
        dtype: gl.constexpr = p_smem.dtype
        s, m_new, m_shift = _softmax_max(s, m_i, scale_log2, start, tok_hi, limit, offs_n, CAUSAL, INTERIOR)
        alpha = gl.exp2(m_i - m_shift)
        _stamp(trace_ptr, kb, 8, TRACE, PARTITION_WARPS)  # here: the max and the factor only
        mbarrier.wait(p_free, (pr & 1) ^ 1)  # both output warpgroups are done with the last P and factor
        _stamp(trace_ptr, kb, 9, TRACE, PARTITION_WARPS)
        a_smem.store(alpha)
        gl.thread_barrier()
        mbarrier.arrive(a_ready, count=1)
        # the keys' two halves, in the score layout's own registers (no data moves)
        s_a, s_b = gl.split(gl.permute(gl.reshape(s, [BLOCK_M, 2, BLOCK_N // 2]), (0, 2, 1)))
        shift_h = gl.convert_layout(m_shift, gl.SliceLayout(1, s_a.type.layout))
        p_a = _softmax_exp(s_a, shift_h, scale_log2, INTERIOR)
        p_smem.index(0).store(p_a.to(dtype))
        fence_async_shared()  # P is read next by the tensor cores
        gl.thread_barrier()
        mbarrier.arrive(p_ready.index(0), count=1)
        p_b = _softmax_exp(s_b, shift_h, scale_log2, INTERIOR)
        l_new = l_i * alpha + gl.convert_layout(gl.sum(p_a + p_b, axis=1), m_i.type.layout)
        p_smem.index(1).store(p_b.to(dtype))
        return m_new, l_new

    @gluon.jit
    def _hand_over(p, alpha, acc, p_smem, a_smem, p_ready, p_free, pr, ROW_O: gl.constexpr, dtype: gl.constexpr):
        """Publish ``P`` and the rescale factor once the output warpgroup has released the buffers, then
        rescale this warpgroup's half."""
        mbarrier.wait(p_free, (pr & 1) ^ 1)
        p_smem.store(p.to(dtype))
        alpha_o = gl.convert_layout(alpha, ROW_O)
        a_smem.store(alpha_o)
        fence_async_shared()  # P is read next by the tensor cores
        gl.thread_barrier()
        mbarrier.arrive(p_ready, count=1)
        return acc * alpha_o[:, None]

    # one build for every s_q of sparse calls (lse_s_q, unused in dense ones), and one whatever the cache's size and
    # the block table's width (GLUON_RUNTIME_INTS)
    @gluon.jit(do_not_specialize=[*GLUON_RUNTIME_INTS, "lse_s_q"])
    def _dense_decode_sm90_ws_kernel(
        q_ptr, k_ptr, block_table_ptr, seqlens_ptr, sched_ptr, num_splits_ptr,
        out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr, counters_ptr,
        stride_qb, stride_qs, stride_qh,
        stride_kb, stride_kp, stride_kh,
        stride_bt,
        stride_ob, stride_os, stride_oh,
        stride_lb, stride_lh,
        s_q, h_q, group, rows, row_tiles, page_block_size, max_blocks, num_blocks, scale_log2, k_desc, sink_ptr,
        descale_k_ptr, descale_q_ptr, trace_ptr,
        CAUSAL: gl.constexpr, OVERLAP: gl.constexpr, SOFTMAX_ONLY: gl.constexpr, TMA_K: gl.constexpr,
        BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
        D_V: gl.constexpr, D_PE: gl.constexpr,
        SOFTMAX_WARPS: gl.constexpr, OUTPUT_WARPS: gl.constexpr, LOADER_WARPS: gl.constexpr, OUTPUT_REGS: gl.constexpr,
        LOADER_REGS: gl.constexpr, ASYNC_ARRIVE: gl.constexpr, K_BOXES: gl.constexpr, SPARSE: gl.constexpr,
        KV_FP8: gl.constexpr, PREFETCH_L2: gl.constexpr, HAS_SINK: gl.constexpr, KV_E4M3: gl.constexpr,
        Q_E4M3: gl.constexpr, LIST_AHEAD: gl.constexpr, TRACE: gl.constexpr,
        BOX_ALLOCS: gl.constexpr, OUTPUT_DECODE: gl.constexpr, INTERIOR: gl.constexpr = False,
        P_HALVES: gl.constexpr = False, LAG: gl.constexpr = False, LAG_HALVES: gl.constexpr = False,
        k_half_desc=None, lse_s_q=1,
    ):
        # the products' type: q's, or fp16 for e4m3 codes (more mantissa for P than bf16; codes are <= 448)
        if Q_E4M3:
            dtype: gl.constexpr = gl.float16
        else:
            dtype: gl.constexpr = q_ptr.dtype.element_ty
        HALF: gl.constexpr = D_V // 2
        gl.static_assert(D_PE == 0 or D_PE == 64, "the RoPE part must be 0 or 64 dims")
        gl.static_assert(HALF % 64 == 0, "the value dims must split in two multiples of 64")
        SMEM: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
        ROWS_SMEM: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, order=[0])
        q_lo = gl.allocate_shared_memory(dtype, [BLOCK_M, HALF], SMEM)
        q_hi = gl.allocate_shared_memory(dtype, [BLOCK_M, HALF], SMEM)
        k_lo = gl.allocate_shared_memory(dtype, [2, BLOCK_N, HALF], SMEM)
        k_hi = gl.allocate_shared_memory(dtype, [2, BLOCK_N, HALF], SMEM)
        if D_PE > 0:
            q_pe = gl.allocate_shared_memory(dtype, [BLOCK_M, D_PE], SMEM)
            k_pe = gl.allocate_shared_memory(dtype, [2, BLOCK_N, D_PE], SMEM)
        else:  # never read: the RoPE products and copies are compiled out
            q_pe = q_lo
            k_pe = k_lo
        if P_HALVES:  # P as two halves of the tile's keys, each an A operand of its own (:func:`_softmax_halves`)
            P_SMEM: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=64, element_bitwidth=16, rank=2)
            p_smem = gl.allocate_shared_memory(dtype, [2, BLOCK_M, BLOCK_N // 2], P_SMEM)
        else:
            p_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, BLOCK_N], SMEM)
        a_smem = gl.allocate_shared_memory(gl.float32, [BLOCK_M], ROWS_SMEM)
        # token-sparse lists over 16-bit caches: each K stage's slots, for the softmax warpgroup's mask (512 B)
        slots = gl.allocate_shared_memory(gl.int32, [2, BLOCK_N if SPARSE and not KV_FP8 else 1], ROWS_SMEM)

        q_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        q_free = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        gl.static_assert(K_BOXES == 1 or (TMA_K and K_BOXES == (D_V + D_PE) // 64), "one ready barrier per box")
        gl.static_assert(not SPARSE or (SOFTMAX_ONLY and not TMA_K and not CAUSAL),
                         "token-sparse lists run the four-warpgroup form, keys by cp.async, no causal mask")
        gl.static_assert(not HAS_SINK or SPARSE, "attention sinks are a sparse-decoding option")
        gl.static_assert(not TRACE or SOFTMAX_ONLY, "the trace build stamps the four-warpgroup form")
        gl.static_assert(not BOX_ALLOCS or SOFTMAX_ONLY, "an allocation per box: the four-warpgroup form")
        if BOX_ALLOCS:  # one allocation per box (:func:`_box_bar`): 8 or 9 boxes
            gl.static_assert(K_BOXES == 8 or K_BOXES == 9, "an allocation per box: (512 or 576) / 64 boxes")
            BAR: gl.constexpr = mbarrier.MBarrierLayout()
            k_ready = (gl.allocate_shared_memory(gl.int64, [2, 1], BAR),
                       gl.allocate_shared_memory(gl.int64, [2, 1], BAR),
                       gl.allocate_shared_memory(gl.int64, [2, 1], BAR),
                       gl.allocate_shared_memory(gl.int64, [2, 1], BAR),
                       gl.allocate_shared_memory(gl.int64, [2, 1], BAR),
                       gl.allocate_shared_memory(gl.int64, [2, 1], BAR),
                       gl.allocate_shared_memory(gl.int64, [2, 1], BAR),
                       gl.allocate_shared_memory(gl.int64, [2, 1], BAR))
            if K_BOXES == 9:  # the RoPE box
                k_ready = k_ready + (gl.allocate_shared_memory(gl.int64, [2, 1], BAR),)
        else:
            k_ready = gl.allocate_shared_memory(gl.int64, [2 * K_BOXES, 1], mbarrier.MBarrierLayout())
        k_free = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        gl.static_assert(not P_HALVES or (SOFTMAX_ONLY and BLOCK_N == 64 and not OUTPUT_DECODE),
                         "P in halves: the four-warpgroup form, 64-key tiles, no decoding output warpgroups")
        if P_HALVES:  # each half of P, then the rescale factor ahead of them (:func:`_softmax_halves`)
            p_ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
            a_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        else:
            p_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
            a_ready = p_ready  # never read
        p_free = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        # with ASYNC_ARRIVE each loader thread arrives once per copy batch; else one arrival
        LOADED: gl.constexpr = LOADER_WARPS * 32 if ASYNC_ARRIVE else 1
        gl.static_assert(not KV_FP8 or (SPARSE and D_V == 512 and D_PE == 64), "FP8 records: the V3.2 layout")
        gl.static_assert(not KV_E4M3 or (not SPARSE and not TMA_K and K_BOXES == 1 and D_V == 512 and D_PE == 64),
                         "per-tensor FP8 keys: dense, by cp.async, (576, 512) dims")
        gl.static_assert(not Q_E4M3 or KV_E4M3, "an e4m3 q comes with a per-tensor FP8 cache")
        gl.static_assert(not LIST_AHEAD or SPARSE or KV_E4M3, "entries a tile ahead: lists, or per-tensor FP8 keys")
        gl.static_assert(not OUTPUT_DECODE or (KV_FP8 and SOFTMAX_ONLY and not PREFETCH_L2),
                         "the output warpgroups decode V3.2 records in the four-warpgroup form, no L2 prefetch")
        # TMA tiles: one arrival with the byte count; FP8 tiles: one after the partition's decode, or with
        # OUTPUT_DECODE one from each output warpgroup after its half's
        if OUTPUT_DECODE:
            K_LOADED: gl.constexpr = 2
        else:
            K_LOADED: gl.constexpr = 1 if (TMA_K or KV_FP8 or KV_E4M3) else LOADED
        _stamp(trace_ptr, 0, 10, TRACE, SOFTMAX_WARPS)  # the program's entry
        _stamp_program(trace_ptr, 0, TRACE, SOFTMAX_WARPS)
        mbarrier.init(q_ready, count=LOADED)
        mbarrier.init(q_free, count=1)
        if P_HALVES:
            for i in gl.static_range(2):
                mbarrier.init(p_ready.index(i), count=1)
            mbarrier.init(a_ready, count=1)
        else:
            mbarrier.init(p_ready, count=1)
        mbarrier.init(p_free, count=2 if SOFTMAX_ONLY else 1)  # every warpgroup that reads P
        if BOX_ALLOCS:
            for c in gl.static_range(K_BOXES):
                for st in gl.static_range(2):
                    mbarrier.init(_box_bar(k_ready, st, c, K_BOXES, BOX_ALLOCS), count=K_LOADED)
        else:
            for i in gl.static_range(2 * K_BOXES):
                mbarrier.init(k_ready.index(i), count=K_LOADED)
        if LAG:  # each stage's halves freed apart: k_free by the left output warpgroup, k_free_hi by the right one
            gl.static_assert(SOFTMAX_ONLY and TMA_K and K_BOXES == 9 and BOX_ALLOCS and not P_HALVES and not SPARSE
                             and not KV_E4M3 and not OUTPUT_DECODE,
                             "the right output warpgroup a tile behind: four warpgroups, TMA boxes, (576, 512) dims")
            BAR1: gl.constexpr = mbarrier.MBarrierLayout()
            k_free_hi = gl.allocate_shared_memory(gl.int64, [2, 1], BAR1)
            lp_ready = gl.allocate_shared_memory(gl.int64, [2, 1], BAR1)
            s_issued = gl.allocate_shared_memory(gl.int64, [1], BAR1)
            la_smem = gl.allocate_shared_memory(gl.float32, [2, BLOCK_M], ROWS_SMEM)
            for i in gl.static_range(2):
                mbarrier.init(k_free.index(i), count=1)
                mbarrier.init(k_free_hi.index(i), count=1)
                mbarrier.init(lp_ready.index(i), count=1)
            mbarrier.init(s_issued, count=1)
            lag = (k_free_hi, lp_ready, s_issued, la_smem)
        else:
            for i in gl.static_range(2):
                mbarrier.init(k_free.index(i), count=2)  # both warpgroups that multiply by V
            lag = (k_free, p_ready, p_ready, a_smem)  # never read
        gl.static_assert(not LAG_HALVES or LAG, "a value half a box: with the right output warpgroup a tile behind")
        bars = (q_ready, q_free, k_ready, k_free, p_ready, p_free)
        if OUTPUT_DECODE:  # each stage's copies landed (the loader's threads arrive)
            codes_ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
            for i in gl.static_range(2):
                mbarrier.init(codes_ready.index(i), count=LOADED)
            dec = codes_ready
        else:
            dec = k_free  # never read

        if SOFTMAX_ONLY:
            gl.warp_specialize([
                (_softmax_only, (lse_ptr, lse_acc_ptr, seqlens_ptr, sched_ptr, num_splits_ptr, stride_lb, stride_lh,
                                 s_q, h_q, group, rows, row_tiles, page_block_size, max_blocks, scale_log2,
                                 q_lo, q_hi, q_pe, k_lo, k_hi, k_pe, p_smem, a_smem, bars, slots, block_table_ptr,
                                 stride_bt, num_blocks, sink_ptr, descale_k_ptr, descale_q_ptr, lse_s_q,
                                 CAUSAL, BLOCK_M, BLOCK_N, D_V, D_PE, SOFTMAX_WARPS, ASYNC_ARRIVE, K_BOXES, SPARSE,
                                 HAS_SINK, KV_E4M3, Q_E4M3, KV_FP8, trace_ptr, TRACE, BOX_ALLOCS, INTERIOR, a_ready,
                                 P_HALVES, lag, LAG, LAG_HALVES)),
                (_output_quarters, (out_ptr, o_acc_ptr, seqlens_ptr, sched_ptr, num_splits_ptr,
                                stride_ob, stride_os, stride_oh,
                                s_q, h_q, group, rows, row_tiles, page_block_size, max_blocks,
                                k_lo, p_smem, a_smem, bars, 0, BLOCK_M, BLOCK_N, D_V, OUTPUT_WARPS, ASYNC_ARRIVE,
                                trace_ptr, TRACE, dec, OUTPUT_DECODE, a_ready, P_HALVES, k_pe, lag, LAG)),
                (_output_quarters, (out_ptr, o_acc_ptr, seqlens_ptr, sched_ptr, num_splits_ptr,
                                stride_ob, stride_os, stride_oh,
                                s_q, h_q, group, rows, row_tiles, page_block_size, max_blocks,
                                k_hi, p_smem, a_smem, bars, HALF, BLOCK_M, BLOCK_N, D_V, OUTPUT_WARPS,
                                ASYNC_ARRIVE, trace_ptr, False, dec, OUTPUT_DECODE, a_ready, P_HALVES, k_pe, lag,
                                LAG)),
                (_loader, (q_ptr, k_ptr, block_table_ptr, seqlens_ptr, sched_ptr, num_splits_ptr,
                           stride_qb, stride_qs, stride_qh, stride_kb, stride_kp, stride_kh, stride_bt,
                           group, rows, row_tiles, page_block_size, max_blocks, num_blocks,
                           q_lo, q_hi, q_pe, k_lo, k_hi, k_pe, p_smem, a_smem, bars, k_desc, slots,
                           BLOCK_M, BLOCK_N, D_V, D_PE, LOADER_WARPS, ASYNC_ARRIVE, TMA_K, K_BOXES, SPARSE, KV_FP8,
                           PREFETCH_L2, KV_E4M3, Q_E4M3, LIST_AHEAD, trace_ptr, TRACE, BOX_ALLOCS, dec,
                           OUTPUT_DECODE, lag, LAG, k_half_desc, LAG_HALVES)),
            ], [OUTPUT_WARPS, OUTPUT_WARPS, LOADER_WARPS], [OUTPUT_REGS, OUTPUT_REGS, LOADER_REGS])
        else:
            gl.warp_specialize([
                (_softmax_half, (out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr, seqlens_ptr, sched_ptr, num_splits_ptr,
                                 stride_ob, stride_os, stride_oh, stride_lb, stride_lh,
                                 s_q, h_q, group, rows, row_tiles, page_block_size, max_blocks, scale_log2,
                                 q_lo, q_hi, q_pe, k_lo, k_hi, k_pe, p_smem, a_smem, bars,
                                 CAUSAL, OVERLAP, BLOCK_M, BLOCK_N, D_V, D_PE, SOFTMAX_WARPS, ASYNC_ARRIVE,
                                 K_BOXES, descale_k_ptr, KV_E4M3, descale_q_ptr, Q_E4M3)),
                (_output_half, (out_ptr, o_acc_ptr, seqlens_ptr, sched_ptr, num_splits_ptr,
                                stride_ob, stride_os, stride_oh,
                                s_q, h_q, group, rows, row_tiles, page_block_size, max_blocks,
                                k_hi, p_smem, a_smem, bars, HALF, BLOCK_M, BLOCK_N, D_V, OUTPUT_WARPS,
                                ASYNC_ARRIVE)),
                (_loader, (q_ptr, k_ptr, block_table_ptr, seqlens_ptr, sched_ptr, num_splits_ptr,
                           stride_qb, stride_qs, stride_qh, stride_kb, stride_kp, stride_kh, stride_bt,
                           group, rows, row_tiles, page_block_size, max_blocks, num_blocks,
                           q_lo, q_hi, q_pe, k_lo, k_hi, k_pe, p_smem, a_smem, bars, k_desc, slots,
                           BLOCK_M, BLOCK_N, D_V, D_PE, LOADER_WARPS, ASYNC_ARRIVE, TMA_K, K_BOXES, SPARSE, KV_FP8,
                           PREFETCH_L2, KV_E4M3, Q_E4M3, LIST_AHEAD, trace_ptr, TRACE, BOX_ALLOCS, dec,
                           OUTPUT_DECODE)),
            ], [OUTPUT_WARPS, LOADER_WARPS], [OUTPUT_REGS, LOADER_REGS])


def check_trace(trace: torch.Tensor | None, device: torch.device, softmax_only: bool = True) -> None:
    """Raise :class:`~openmla._runtime.InvalidArgumentError` for a ``trace=`` buffer the trace build cannot
    write: it must be :func:`trace_buffer`'s int64 [TRACE_PIECES + TRACE_PROGRAM_ROWS, TRACE_TILES, TRACE_EVENTS],
    contiguous, on the call's device, and the call must run the four-warpgroup form (the only one stamped)."""
    if trace is None:
        return
    want = (TRACE_PIECES + TRACE_PROGRAM_ROWS, TRACE_TILES, TRACE_EVENTS)
    if (not isinstance(trace, torch.Tensor) or trace.dtype != torch.int64 or tuple(trace.shape) != want
            or not trace.is_contiguous() or trace.device != device):
        got = (f"{'' if trace.is_contiguous() else 'a non-contiguous '}{trace.dtype} {tuple(trace.shape)} on "
               f"{trace.device}" if isinstance(trace, torch.Tensor) else type(trace).__name__)
        raise InvalidArgumentError(f"trace: the trace build writes a contiguous torch.int64 tensor of shape {want} "
                                   f"on {device}, got {got}; make one with trace_buffer(device)")
    if not softmax_only:
        raise InvalidArgumentError("trace: only the four-warpgroup form (softmax_only=True) is stamped; pass "
                                   "softmax_only=True or no trace")


def trace_buffer(device) -> torch.Tensor:
    """A zeroed int64 [TRACE_PIECES + TRACE_PROGRAM_ROWS, TRACE_TILES, TRACE_EVENTS] buffer for the ``trace=``
    argument of the launchers: SM cycle counts per piece, tile and event (:func:`_stamp`) in its first
    :data:`TRACE_PIECES` rows, each program's entry and end in ns after them (:func:`_stamp_program`; the
    warp-specialized kernel only), read by ``benchmarks/trace_ws.py``."""
    return torch.zeros(TRACE_PIECES + TRACE_PROGRAM_ROWS, TRACE_TILES, TRACE_EVENTS, dtype=torch.int64, device=device)


def tma_tiles_fit(k_cache: torch.Tensor) -> bool:
    """Whether whole 64-key tiles of ``k_cache`` can come as TMA boxes: one KV head (MLA has one), pages that
    hold whole tiles, strides TMA can take (rows 16-byte aligned, pages back to back)."""
    num_blocks, page_block_size, h_kv, d = k_cache.shape
    sk = k_cache.stride()
    return not (h_kv != 1 or page_block_size % BLOCK_N or sk[3] != 1 or sk[0] != page_block_size * sk[1]
                or (sk[1] * k_cache.element_size()) % 16 or k_cache.data_ptr() % 16)


def tma_view(k_cache: torch.Tensor):
    """A TMA descriptor of ``k_cache`` as [num_blocks * page_block_size, d] with 64x64 boxes, or ``None``
    where whole tiles cannot come as boxes (:func:`tma_tiles_fit`)."""
    if not tma_tiles_fit(k_cache):
        return None
    num_blocks, page_block_size, h_kv, d = k_cache.shape
    sk = k_cache.stride()
    layout = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
    return TensorDescriptor(k_cache, [num_blocks * page_block_size, d], [sk[1], 1], [BLOCK_N, 64], layout)


def tma_chunks_view(k_cache: torch.Tensor):
    """A TMA descriptor of ``k_cache`` as [d / 64, num_blocks * page_block_size, 64] with boxes of four 64-column chunks
    of 64 rows (a value half of a tile of (576, 512) dims lands as four contiguous 64x64 swizzled blocks, the layout
    the stage's halves keep), or ``None`` where :func:`tma_tiles_fit` says no. Its strides do not grow with the
    dimension (a chunk is 128 bytes, a row ``d`` elements); TMA takes them in any order."""
    if not tma_tiles_fit(k_cache):
        return None
    num_blocks, page_block_size, h_kv, d = k_cache.shape
    sk = k_cache.stride()
    layout = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=3)
    return TensorDescriptor(k_cache, [d // 64, num_blocks * page_block_size, 64], [64, sk[1], 1], [4, BLOCK_N, 64],
                            layout)


def dense_decode_sm90_ws_fwd(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    block_table: torch.Tensor,
    cache_seqlens: torch.Tensor,
    head_dim_v: int,
    tile_scheduler_metadata: torch.Tensor,
    num_splits: torch.Tensor,
    softmax_scale: float,
    causal: bool,
    workspace: tuple[torch.Tensor, ...] | None = None,
    overlap: bool = OVERLAP,
    async_arrive: bool = ASYNC_ARRIVE,
    softmax_only: bool | None = None,
    tma_k: bool = TMA_K,
    box_ready: bool = BOX_READY,
    loader_regs: int | None = None,
    descale_k: torch.Tensor | None = None,
    descale_q: torch.Tensor | None = None,
    list_ahead: bool | None = None,
    trace: torch.Tensor | None = None,
    box_allocs: bool = BOX_ALLOCS,
    interior_softmax: bool | None = None,
    p_halves: bool | None = None,
    lag: bool | None = None,
    lag_halves: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as :func:`openmla.ops.decode_dense.dense_decode_fwd`, on Hopper, 16-bit caches or (with
    ``descale_k``, a one-element fp32 tensor on q's device) a per-tensor FP8 cache of e4m3 codes, (576, 512)
    dims: each tile's codes are decoded exactly in the loader, the descales applied in fp32. q is bf16/fp16,
    or (with ``descale_q``) float8_e4m3fn codes decoded to fp16, the products' type then; output bf16.

    q: [b, s_q, h_q, d] bf16/fp16; k_cache: [num_blocks, page_block_size, h_kv, d] same dtype, d 576 or
    512; returns ``out`` [b, s_q, h_q, head_dim_v] in q's dtype and ``lse`` [b, h_q, s_q] fp32. Split
    partials are always merged by the combine kernel (a second launch). ``overlap``: the softmax
    warpgroup's order, ``async_arrive``: how the loader signals a landed tile, ``softmax_only``: the
    softmax warpgroup hands both output halves to two output warpgroups (module docstring; ``overlap``
    has no meaning then; ``None``: :func:`softmax_only_for` the rows), ``tma_k``: whole K tiles by TMA
    where :func:`tma_view` allows it, ``box_ready``: with TMA, one ready barrier per 64-column box (no
    effect without),
    ``loader_regs``: the loader partition's registers (default from :data:`WORKER_REGS` /
    :data:`SOLO_WORKER_REGS`; the softmax warpgroup gets what the others leave), ``list_ahead``: over FP8 codes,
    the loader reads each tile's block-table entries a tile ahead (``None``: :data:`LIST_AHEAD`, read at the call),
    ``trace``: the trace build (:func:`trace_buffer`; the four-warpgroup form only), a diagnostic,
    ``box_allocs``: with ``box_ready`` in the four-warpgroup form, each box's ready barriers in an allocation of
    their own (:func:`_box_bar`; default :data:`BOX_ALLOCS`), ``interior_softmax``: in the four-warpgroup form, tiles
    every row sees whole skip the softmax's mask (:func:`_online_softmax`; ``None``: :data:`INTERIOR_SOFTMAX`, read
    at the call), ``p_halves``: where that interior softmax runs, each tile's rescale factor and then ``P`` in two
    halves of its keys handed to the output warpgroups (:func:`_softmax_halves`; ``None``: :data:`P_HALVES`, read at
    the call), ``lag``: in the four-warpgroup form over whole TMA tiles of (576, 512) dims, the right output warpgroup
    a tile behind the left one, P in each stage's RoPE slot, each half of a stage freed apart (``None``: from
    :data:`LAG_MIN_ROWS` query rows per KV head, read at the call; P is then handed over whole), ``lag_halves``: with
    it, each value half of a tile as one TMA box (``None``: :data:`LAG_HALVES`, read at the call).
    """
    b, s_q, h_q, d = q.shape
    interior_softmax = INTERIOR_SOFTMAX if interior_softmax is None else interior_softmax
    p_halves = P_HALVES if p_halves is None else p_halves
    list_ahead = LIST_AHEAD if list_ahead is None else list_ahead
    h_kv = k_cache.shape[2]
    rows = s_q * (h_q // h_kv)
    lag = rows >= LAG_MIN_ROWS if lag is None else lag
    row_tiles = -(-rows // BLOCK_M)
    num_parts = tile_scheduler_metadata.shape[0]
    if SCHED_BLOCK % BLOCK_N:
        raise ValueError("the scheduler's unit must be a multiple of the sm_90 kernel's KV tile")
    lse = torch.empty(b, h_q, s_q, dtype=torch.float32, device=q.device)
    if workspace is None:
        workspace = split_workspace(q, head_dim_v, num_parts)
    e4m3 = descale_k is not None
    q_e4m3 = q.dtype == torch.float8_e4m3fn
    if e4m3 and (d, head_dim_v) != (576, 512):
        raise ValueError(f"the per-tensor FP8 path reads (d, head_dim_v) = (576, 512), got {(d, head_dim_v)}")
    if q_e4m3 != (descale_q is not None) or (q_e4m3 and not e4m3):
        raise ValueError("descale_q must be given exactly for an e4m3 q, which needs a per-tensor FP8 cache")
    k_desc = tma_view(k_cache) if tma_k and not e4m3 else None
    k_boxes = (d // 64) if (box_ready and k_desc is not None) else 1
    if softmax_only is None:
        softmax_only = softmax_only_for(rows, boxed=k_boxes > 1)
    regs = SOLO_WORKER_REGS if softmax_only else WORKER_REGS
    if e4m3 and softmax_only:
        regs = E4M3_WORKER_REGS  # the loader decodes each tile
    if loader_regs is not None:
        regs = (regs[0], int(loader_regs))
    check_trace(trace, q.device, softmax_only)
    out = torch.empty(b, s_q, h_q, head_dim_v, dtype=torch.bfloat16 if q_e4m3 else q.dtype, device=q.device)
    if e4m3:
        k_cache = k_cache.view(torch.uint8)  # the kernel addresses codes in bytes
    if q_e4m3:
        q = q.view(torch.uint8)
    # the folded scale needs scale_log2 > 0 (with FP8 codes it carries the descales, read on the device: not there);
    # built without the causal mask only
    interior = bool(interior_softmax and softmax_only and softmax_scale > 0 and not e4m3 and not (causal and s_q > 1))
    lag_on = bool(lag and softmax_only and k_desc is not None and k_boxes == 9 and box_allocs and not e4m3)
    lag_halves = LAG_HALVES if lag_halves is None else lag_halves
    k_half_desc = tma_chunks_view(k_cache) if lag_on and lag_halves else None
    launch(_dense_decode_sm90_ws_kernel, (row_tiles * h_kv, num_parts),
        *splitkv_args(q, k_cache, block_table, cache_seqlens, tile_scheduler_metadata, num_splits,
                      out, lse, workspace, row_tiles, softmax_scale), k_desc, None, descale_k, descale_q, trace,
        CAUSAL=bool(causal and s_q > 1), OVERLAP=bool(overlap), SOFTMAX_ONLY=bool(softmax_only),
        TMA_K=k_desc is not None, BLOCK_M=BLOCK_M,
        BLOCK_N=BLOCK_N, D_V=head_dim_v, D_PE=d - head_dim_v, SOFTMAX_WARPS=NUM_WARPS, OUTPUT_WARPS=WORKER_WARPS[0],
        LOADER_WARPS=WORKER_WARPS[1], OUTPUT_REGS=regs[0], LOADER_REGS=regs[1], ASYNC_ARRIVE=bool(async_arrive),
        K_BOXES=k_boxes, SPARSE=False, KV_FP8=False, PREFETCH_L2=False, HAS_SINK=False, KV_E4M3=e4m3,
        Q_E4M3=q_e4m3, LIST_AHEAD=bool(e4m3 and list_ahead), TRACE=trace is not None,
        BOX_ALLOCS=bool(box_allocs and k_boxes > 1 and softmax_only), OUTPUT_DECODE=0,
        INTERIOR=interior,
        P_HALVES=bool(p_halves and interior and not lag_on),
        LAG=lag_on,
        LAG_HALVES=k_half_desc is not None,
        k_half_desc=k_half_desc,
        num_warps=NUM_WARPS,
        maxnreg=SOLO_MAXNREG if softmax_only else MAXNREG,
    )
    combine_splits(out, lse, workspace[0], workspace[1], num_splits)
    return out, lse
