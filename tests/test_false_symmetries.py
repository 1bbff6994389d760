"""Patterns that once got false symmetries, each written here as a model: every group
the weight space offers must keep the outputs at the traced shape and at other shapes
(``ws.verify``), and each case also pins the groups that remain (a rule that fixed
everything would pass the check but lose the symmetry that is there)."""
import functools
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metanet import WeightSpace
from metanet.space import RuleError, register_rule
from metanet.space import weightspace as wsmod
from metanet.space.rules import RULES


def space(model, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return WeightSpace.of(model.eval(), x, cache=False)


def check(model, x, others, sizes=None):
    """verify at the traced shape and at ``others``; return the group sizes."""
    torch.manual_seed(0)
    ws = space(model, x)
    ws.verify(model, x, shapes=others, n=3)
    if sizes is not None:
        assert sorted(g.size for g in ws.groups) == sorted(sizes)
    return ws


class RNNHead(nn.Module):
    """The head reads the final states h_n / c_n of a stacked or bidirectional RNN."""

    def __init__(self, cell, layers, bidirectional, read):
        super().__init__()
        self.rnn = cell(5, 6, num_layers=layers, batch_first=True, bidirectional=bidirectional)
        self.read = read
        self.fc = nn.Linear(12 if bidirectional else 6, 3)

    def forward(self, x):
        _, state = self.rnn(x)
        return self.fc(self.read(state))


SEQ, SEQ2 = (torch.randn(2, 7, 5),), [(torch.randn(3, 4, 5),)]


@pytest.mark.parametrize("cell,layers,bidir,read", [
    (nn.LSTM, 2, False, lambda s: s[0][-1]),                       # fc(h_n[-1])
    (nn.LSTM, 3, False, lambda s: s[0][-1] + s[1][-1]),            # fc(h_n[-1] + c_n[-1])
    (nn.GRU, 1, True, lambda s: torch.cat([s[0], s[1]], -1)),      # fc(cat(h_n[0], h_n[1]))
    (nn.GRU, 2, False, lambda s: s[0]),                            # h_n[0]: the first layer's state
], ids=["lstm2_h", "lstm3_h_plus_c", "bigru_cat", "gru2_first_layer"])
def test_recurrent_final_states(cell, layers, bidir, read):
    torch.manual_seed(0)
    # every layer and direction shares one group once the final states are read
    check(RNNHead(cell, layers, bidir, read), SEQ, SEQ2, sizes=[6])


def test_recurrent_output_sequence_keeps_a_group_per_layer():
    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.fc = nn.LSTM(5, 6, num_layers=2, batch_first=True), nn.Linear(6, 3)

        def forward(self, x):
            return self.fc(self.rnn(x)[0][:, -1])

    torch.manual_seed(0)
    check(Seq(), SEQ, SEQ2, sizes=[6, 6])


class PosTable(nn.Module):
    """A positional table sliced to the input's length."""

    def __init__(self):
        super().__init__()
        self.inp, self.pos, self.fc = nn.Linear(4, 8), nn.Parameter(torch.randn(1, 16, 8)), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.inp(x) + self.pos[:, :x.shape[1]]))


def test_positional_table_sliced_to_the_input_length():
    torch.manual_seed(0)
    ws = check(PosTable(), (torch.randn(2, 10, 4),), [(torch.randn(2, 16, 4),), (torch.randn(2, 3, 4),)],
               sizes=[8])
    # the table's rows are positions: the 6 rows unused at length 10 are no group
    assert all(not ws.spaces.free[a] for seg in ws.axes("pos")[1] for a in seg)


def test_table_sliced_through_a_projection_and_a_reduction():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.table, self.proj, self.fc = nn.Parameter(torch.randn(12, 4)), nn.Linear(4, 4), nn.Linear(4, 3)

        def forward(self, x):   # mean of the first L projected rows, L = the input's length
            return self.fc(x.sum(1) + torch.relu(self.proj(self.table))[: x.shape[1]].mean(0))

    torch.manual_seed(0)
    check(M(), (torch.randn(2, 5, 4),), [(torch.randn(2, 9, 4),), (torch.randn(2, 3, 4),)], sizes=[4])


def test_concatenated_channel_statistics():
    class SpatialAttention(nn.Module):     # CBAM's spatial gate
        def __init__(self):
            super().__init__()
            self.c1, self.gate, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(2, 1, 3, padding=1), nn.Linear(8, 3)

        def forward(self, x):
            h = torch.relu(self.c1(x))
            a = torch.sigmoid(self.gate(torch.cat([h.mean(1, keepdim=True), h.amax(1, keepdim=True)], 1)))
            return self.fc((h * a).mean((2, 3)))

    torch.manual_seed(0)
    check(SpatialAttention(), (torch.randn(2, 3, 8, 8),), [(torch.randn(2, 3, 6, 6),)], sizes=[8])


def test_heads_chunked_and_repeated_are_not_a_group():
    """Differential attention: value heads chunked in two halves, each repeated back to
    the full head count; the halves play different roles, so heads may not permute."""
    class DiffAttention(nn.Module):
        def __init__(self, d=8, heads=2):
            super().__init__()
            self.h, self.dh = heads, d // heads
            self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
            self.lam = nn.Parameter(torch.randn(self.dh))

        def forward(self, x):
            B, L, _ = x.shape
            q, k, v = (m(x).view(B, L, self.h, self.dh).transpose(1, 2) for m in (self.q, self.k, self.v))
            v1, v2 = (t.repeat(1, 2, 1, 1) for t in torch.chunk(v, 2, dim=1))
            a1 = F.scaled_dot_product_attention(q, k, v1)
            a2 = F.scaled_dot_product_attention(q, k, v2)
            out = a1 - torch.exp(self.lam.sum()) * a2
            return self.o(out.transpose(1, 2).reshape(B, L, -1))

    torch.manual_seed(0)
    ws = check(DiffAttention(), SEQ3, [(torch.randn(3, 9, 8),)], sizes=[2, 4, 4, 4])
    heads = [g for g in ws.groups if g.size == 2]       # query/key heads still permute ...
    assert [("v.weight", 0) in ws.group_axes(g.id) for g in heads] == [False]   # ... value heads not


SEQ3 = (torch.randn(2, 6, 8),)


def test_multi_query_attention_fused_qkv_keeps_query_heads():
    """One fused projection makes num_heads query heads plus one key and one value head
    (x[..., [-2], :] picks the key head): query heads permute."""
    class MQA(nn.Module):
        def __init__(self, d=8, heads=4):
            super().__init__()
            self.h, self.dh = heads, d // heads
            self.qkv, self.o = nn.Linear(d, (heads + 2) * self.dh), nn.Linear(d, d)

        def forward(self, x):
            B, L, _ = x.shape
            f = self.qkv(x).view(B, L, self.h + 2, self.dh)
            q, k, v = f[..., :-2, :], f[..., [-2], :], f[..., [-1], :]
            k, v = k.expand(-1, -1, self.h, -1), v.expand(-1, -1, self.h, -1)
            a = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)))
            return self.o(a.transpose(1, 2).reshape(B, L, -1))

    torch.manual_seed(0)
    ws = check(MQA(), SEQ3, [(torch.randn(3, 9, 8),)])
    assert 4 in [g.size for g in ws.groups]   # the query heads


def test_data_dependent_sizes_are_fixed_not_fatal():
    """Routing by value (a mixture of experts) gives sizes known only at run time."""
    class Routed(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.e, self.fc = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 3)

        def forward(self, x):
            h = torch.relu(self.a(x))
            picked = h[h[:, 0] > 0]                  # rows chosen by value
            return self.fc(h + self.e(picked).sum(0, keepdim=True))

    torch.manual_seed(0)
    x = (torch.randn(5, 4),)
    ws = space(Routed(), x)
    ws.verify(Routed().eval() if False else _same(Routed), x, n=3)


def _same(cls):
    torch.manual_seed(0)
    return cls().eval()


def test_pixel_shuffle_has_its_own_rule():
    class Up(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(2, 4, 3, padding=1)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            h = F.pixel_shuffle(torch.relu(self.a(x)), 2)     # 8 channels -> 2 channels x (2x2)
            return self.fc(torch.relu(self.b(h)).mean((2, 3)))

    torch.manual_seed(0)
    assert RULES["pixel_shuffle"].family == "reduce"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ws = WeightSpace.of(Up().eval(), (torch.randn(2, 3, 4, 4),), cache=False)
    torch.manual_seed(0)
    ws.verify(_same(Up), (torch.randn(2, 3, 4, 4),), shapes=[(torch.randn(1, 3, 6, 6),)], n=3)
    assert sorted(g.size for g in ws.groups) == [2, 4]   # a's 8 channels = 2 free x 4 fixed


def test_a_rule_that_raises_is_reported_not_hidden():
    calls = []

    @register_rule("demo.boom", symmetry="none")
    def boom(P, n):
        calls.append(n.op)
        raise ValueError("bad rule")

    try:
        @torch.library.custom_op("demo::boom", mutates_args=())
        def boom_op(x: torch.Tensor) -> torch.Tensor:
            return x * 2

        @boom_op.register_fake
        def _(x):
            return torch.empty_like(x)

        class M(nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

            def forward(self, x):
                return self.b(torch.ops.demo.boom(self.a(x)))

        with pytest.raises(RuleError, match=r"demo\.boom.*bad rule"):
            WeightSpace.of(M(), (torch.randn(2, 3),), cache=False)
        assert calls == ["demo.boom"]
        # the public hook: a user's rule for their op, with its symmetry
        register_rule("demo.boom", lambda P, n: list(P.t(n.args[0])), symmetry="linear", replace=True)
        ws = WeightSpace.of(M(), (torch.randn(2, 3),), cache=False)
        assert [g.size for g in ws.groups] == [4]
        ws.verify(_same(M), (torch.randn(2, 3),), n=3)
    finally:
        RULES.pop("demo.boom", None)


def test_registering_a_rule_twice_is_refused():
    with pytest.raises(ValueError, match="already registered.*replace=True"):
        register_rule("linear", lambda P, n: None)
    with pytest.raises(ValueError, match="symmetry must be one of"):
        register_rule("demo.other", lambda P, n: None, symmetry="sometimes")


# Hugging Face models with the patterns above in their default code paths (small configs)
def _hf_cases():
    T = pytest.importorskip("transformers")
    return {
        "diffllama": lambda: T.DiffLlamaForCausalLM(T.DiffLlamaConfig(
            vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=16)),
        "xglm": lambda: T.XGLMForCausalLM(T.XGLMConfig(   # scaled sinusoidal positions, padding index
            vocab_size=32, d_model=16, ffn_dim=32, num_layers=1, attention_heads=2, max_position_embeddings=16)),
        "falcon_mqa": lambda: T.FalconForCausalLM(T.FalconConfig(
            vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=4, multi_query=True,
            new_decoder_architecture=False, alibi=False, parallel_attn=True)),
        "jetmoe": lambda: T.JetMoeForCausalLM(T.JetMoeConfig(   # routing with data-dependent sizes
            vocab_size=32, hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_key_value_heads=2,
            kv_channels=8, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=16)),
    }


@pytest.mark.parametrize("name,groups", [("diffllama", [4, 4, 16, 32]), ("xglm", [2, 8, 8, 32]),
                                         ("falcon_mqa", [4, 16, 64]), ("jetmoe", None)])
def test_hf_models(name, groups):
    def build():
        torch.manual_seed(0)
        m = _hf_cases()[name]().eval()
        with torch.no_grad():   # away from zero-initialised biases and heads
            for p in m.parameters():
                p.add_(0.2 * torch.randn_like(p))
        return m
    ids = (torch.randint(0, 30, (2, 6), generator=torch.Generator().manual_seed(0)),)
    other = [(torch.randint(0, 30, (3, 9), generator=torch.Generator().manual_seed(1)),)]
    ws = space(build(), ids)
    ws.verify(build(), ids, shapes=other, n=3)
    if groups is not None:
        assert sorted(g.size for g in ws.groups) == groups


class ChosenActivation(nn.Module):
    """The activation is a forward-time choice held in an attribute: a string option, a
    function, or a partial of one; ``repr(model)`` is the same for every choice."""

    def __init__(self, act):
        super().__init__()
        self.act = act
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(8, 3)

    def forward(self, x):
        h = self.a(x)
        if isinstance(self.act, str):
            h = torch.relu(h) if self.act == "relu" else torch.tanh(h)
        else:
            h = self.act(h)
        return self.b(h)


def _closure(kind):
    return lambda h: torch.relu(h) if kind == "relu" else torch.tanh(h)


@pytest.mark.parametrize("relu, tanh", [
    ("relu", "tanh"),
    (torch.relu, torch.tanh),
    (functools.partial(F.leaky_relu, negative_slope=0.1), functools.partial(F.elu, alpha=0.1)),
    (_closure("relu"), _closure("tanh")),
], ids=["option", "function", "partial", "closure"])
def test_the_cache_tells_forward_time_choices_apart(relu, tanh):
    """Two models alike in module tree and shapes but not in what their forward computes
    must not share a cached weight space: a ReLU network's scaling group on a tanh (or
    ELU) network would be a false symmetry."""
    wsmod.clear_cache()
    x = (torch.randn(2, 4),)
    first = WeightSpace.of(ChosenActivation(relu).eval(), x)
    second = WeightSpace.of(ChosenActivation(tanh).eval(), x)
    assert [g.scaling for g in first.groups] == [True]
    assert [g.scaling for g in second.groups] == [False]
    torch.manual_seed(0)
    second.verify(ChosenActivation(tanh).eval(), x, shapes=[(torch.randn(7, 3, 4),)], n=3)
    # and the same choice twice is still one cached space
    assert WeightSpace.of(ChosenActivation(tanh).eval(), x) is second
    wsmod.clear_cache()



def test_the_cache_key_reads_a_closure_whose_cell_is_not_yet_filled():
    """A function attribute closing over a name bound later (an empty cell when the key is
    made) still gets a key; once the name is bound, its value joins the key."""
    def make():
        def fn(h):
            return act(h)
        net = ChosenActivation(fn).eval()
        key = wsmod.architecture_key(net, (torch.randn(2, 4),))
        act = torch.tanh
        return key, wsmod.architecture_key(net, (torch.randn(2, 4),))
    before, after = make()
    assert isinstance(before, str) and before != after
