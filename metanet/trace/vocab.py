"""The op vocabulary: every exported ATen op gets one kind from a small documented set.

Kinds are what hypernetworks embed and what messages name; the exact ATen op is
kept beside the kind in :class:`metanet.trace.OpNode`.
"""
from __future__ import annotations

#: kind -> one-line description. The order is stable: hypernetworks use the index.
KINDS: dict[str, str] = {
    "input": "a model input",
    "output": "the model output(s)",
    "linear": "affine map over the last axis (nn.Linear, addmm, matmul with a weight)",
    "conv": "convolution (1d/2d/3d, grouped and depthwise)",
    "conv_transpose": "transposed convolution",
    "embedding": "table lookup (nn.Embedding)",
    "batch_norm": "batch normalization (running statistics)",
    "layer_norm": "layer normalization over trailing axes",
    "group_norm": "group normalization",
    "rms_norm": "RMS normalization",
    "instance_norm": "instance normalization",
    "add": "elementwise addition or subtraction (residual connections)",
    "mul": "elementwise multiplication or division (gating, scaling)",
    "matmul": "product of two activations (attention scores, einsum)",
    "attention": "fused scaled dot-product attention",
    "softmax": "softmax or log-softmax",
    "relu": "ReLU-like piecewise linear activation (relu, leaky_relu, relu6, hardtanh)",
    "gelu": "GELU",
    "silu": "SiLU / swish / mish / hardswish",
    "tanh": "tanh",
    "sigmoid": "sigmoid / hardsigmoid",
    "sin": "sine or cosine (SIREN)",
    "activation": "another pointwise nonlinearity (exp, log, pow, sqrt, erf, ...)",
    "pool": "max, average or adaptive pooling, upsampling",
    "reduce": "mean, sum, max over axes",
    "cat": "concatenation",
    "split": "split, chunk, slice, select, unbind",
    "reshape": "view, reshape, flatten, permute, transpose, squeeze, expand",
    "dropout": "dropout (identity in eval mode)",
    "identity": "copies and casts that do not change values",
    "constant": "a tensor made inside the graph (arange, zeros, masks)",
    "compare": "comparisons and masking (eq, lt, where, masked_fill)",
    "recurrent": "fused recurrent layer (LSTM, GRU, RNN)",
    "getitem": "one output of a multi-output op",
    "other": "an op outside this vocabulary",
}

KIND_INDEX = {k: i for i, k in enumerate(KINDS)}

_BY_OP: dict[str, str] = {}


def _register(kind: str, *ops: str) -> None:
    for op in ops:
        _BY_OP[op] = kind


_register("linear", "linear", "addmm", "mm", "_linear")
_register("conv", "conv1d", "conv2d", "conv3d", "convolution", "_convolution")
_register("conv_transpose", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
_register("embedding", "embedding")
_register("batch_norm", "batch_norm", "_native_batch_norm_legit_no_training",
          "_native_batch_norm_legit", "native_batch_norm", "cudnn_batch_norm")
_register("layer_norm", "layer_norm", "native_layer_norm")
_register("group_norm", "group_norm", "native_group_norm")
_register("rms_norm", "rms_norm", "_fused_rms_norm")
_register("instance_norm", "instance_norm")
_register("add", "add", "sub", "rsub", "add_", "sub_")
_register("mul", "mul", "div", "mul_", "div_", "true_divide", "reciprocal", "neg")
_register("matmul", "matmul", "bmm", "einsum", "baddbmm")
_register("attention", "scaled_dot_product_attention", "_scaled_dot_product_flash_attention",
          "_scaled_dot_product_efficient_attention", "_scaled_dot_product_attention_math")
_register("softmax", "softmax", "log_softmax", "_softmax", "_log_softmax", "_safe_softmax")
_register("relu", "relu", "relu_", "leaky_relu", "leaky_relu_", "relu6", "hardtanh", "hardtanh_",
          "prelu", "threshold")
_register("gelu", "gelu")
_register("silu", "silu", "silu_", "mish", "hardswish", "hardswish_")
_register("tanh", "tanh")
_register("sigmoid", "sigmoid", "hardsigmoid", "hardsigmoid_")
_register("sin", "sin", "cos")
_register("activation", "exp", "log", "pow", "sqrt", "rsqrt", "erf", "abs", "elu", "selu",
          "celu", "softplus", "log_sigmoid", "square", "clamp", "clamp_min", "clamp_max",
          "sign", "floor", "ceil", "round")
_register("pool", "max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices",
          "max_pool1d_with_indices", "max_pool3d_with_indices",
          "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
          "adaptive_avg_pool2d", "adaptive_avg_pool3d", "_adaptive_avg_pool2d",
          "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
          "upsample_nearest1d", "upsample_nearest2d", "upsample_bilinear2d",
          "upsample_nearest3d", "_upsample_nearest_exact2d", "upsample_bicubic2d",
          "pixel_shuffle", "pixel_unshuffle")
_register("reduce", "mean", "sum", "amax", "amin", "max", "min", "std", "var", "prod",
          "norm", "linalg_vector_norm", "argmax", "argmin", "logsumexp", "any", "all",
          "cumsum", "var_mean", "std_mean")
_register("cat", "cat", "concat", "stack", "hstack", "vstack")
_register("split", "split", "split_with_sizes", "chunk", "slice", "select", "unbind",
          "narrow", "index_select", "gather", "index", "tensor_split")
_register("reshape", "view", "reshape", "_unsafe_view", "flatten", "unflatten", "permute",
          "transpose", "t", "squeeze", "unsqueeze", "expand", "expand_as", "contiguous",
          "repeat", "movedim", "swapaxes", "swapdims", "view_as", "broadcast_to",
          "flip", "roll", "repeat_interleave", "tile")
_register("dropout", "dropout", "dropout_", "feature_dropout", "alpha_dropout",
          "native_dropout", "feature_alpha_dropout")
_register("identity", "clone", "alias", "detach", "to", "_to_copy", "type_as", "lift_fresh_copy",
          "copy", "float", "double", "half", "bfloat16", "_assert_tensor_metadata", "contiguous")
_register("constant", "arange", "zeros", "ones", "full", "empty", "zeros_like", "ones_like",
          "full_like", "empty_like", "scalar_tensor", "tensor", "rand", "randn", "linspace",
          "new_zeros", "new_ones", "new_full", "new_empty", "tril", "triu", "eye")
_register("compare", "eq", "ne", "lt", "le", "gt", "ge", "where", "masked_fill",
          "masked_fill_", "logical_and", "logical_or", "logical_not", "bitwise_and",
          "bitwise_or", "bitwise_not", "isnan", "isinf", "maximum", "minimum")
_register("recurrent", "lstm", "gru", "rnn_tanh", "rnn_relu")
_register("getitem", "getitem")


def kind_of(op: str) -> str:
    """The vocabulary kind of an ATen op name (overload packet name, e.g. ``"conv2d"``)."""
    return _BY_OP.get(op, "other")
