"""Shape limits the attention dispatch and the Triton kernel share."""

MIN_HEAD_DIM_8BIT = 32  # 8-bit tensor-core MMAs reduce over >= 32 elements
