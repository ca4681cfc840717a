"""Throwaway: the small-head sparse kernel's stamps at sparse_heads_h16 (median cycles between events a tile)."""
import torch

from openmla._harness import make_sparse_decode_inputs
from openmla.ops.gluon import decode_dense_sm90_ws as ws
from openmla.ops.gluon import decode_sparse_sm90 as sp
from openmla.ops.gluon import decode_sparse_sm90_small_heads as small

inp = make_sparse_decode_inputs(64, 2, 16, 32768, 2048, 64, "V32_FP8", 576, 512, torch.bfloat16, "cuda", 0, 0.0)
buf = ws.trace_buffer("cuda")
small.TRACE_BUF = buf
for _ in range(3):
    buf.zero_()
    sp.sparse_decode_sm90_fwd(inp.q, inp.k_cache, inp.indices, 512, inp.softmax_scale, is_fp8=True)
    torch.cuda.synchronize()
t = buf.cpu()
names = ["scores issued + copies issued", "scores wait", "softmax + P", "P V issued", "wait codes", "decode"]
for ev in range(6):
    d = (t[:, 2:28, ev + 1] - t[:, 2:28, ev]).flatten().float()
    print(f"{names[ev]:30s} median {d.median().item():8.0f} cycles")
per = (t[:, 3:28, 0] - t[:, 2:27, 0]).flatten().float()
print(f"period                         median {per.median().item():8.0f} cycles")
first = t[:, 0, 0].float(); print("tiles stamped per piece (nonzero):", [(t[i, :, 0] != 0).sum().item() for i in range(4)])
