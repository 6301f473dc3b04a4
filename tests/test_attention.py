import pytest
import torch

from infinitetalk_dist.kernels import attention, resolve_backend


def _qkv(seed=0, b=2, lq=7, lk=9, h=3, d=8):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, lq, h, d, generator=g), torch.randn(b, lk, h, d, generator=g),
            torch.randn(b, lk, h, d, generator=g))


def test_matches_explicit_softmax():
    q, k, v = _qkv()
    ref = torch.einsum("bqhk,bkhd->bqhd", torch.softmax(torch.einsum("bqhd,bkhd->bqhk", q, k) / 8**0.5, -1), v)
    torch.testing.assert_close(attention(q, k, v), ref, rtol=1e-5, atol=1e-6)


def test_padded_keys_do_not_matter():
    q, k, v = _qkv()
    base = attention(q, k[:, :6], v[:, :6])
    junk_k, junk_v = k.clone(), v.clone()
    junk_k[:, 6:] = 1e3
    junk_v[:, 6:] = -1e3
    assert torch.equal(attention(q, junk_k, junk_v, k_lens=6), base)  # int: sliced, exact
    per_row = attention(q, junk_k, junk_v, k_lens=torch.tensor([6, 9]))  # tensor: masked
    torch.testing.assert_close(per_row[0], base[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(per_row[1], attention(q, junk_k, junk_v)[1], rtol=1e-5, atol=1e-6)


def test_backend_names():
    assert resolve_backend("sdpa") == "sdpa"
    with pytest.raises(ValueError, match="unknown attention backend"):
        resolve_backend("nope")
    # GPU-only kernels fall back to SDPA on CPU tensors instead of failing.
    q, k, v = _qkv()
    assert torch.equal(attention(q, k, v, backend="cudnn"), attention(q, k, v))
