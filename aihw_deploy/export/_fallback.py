"""Model-local ONNX functions ``ai.aihw::AnalogMatMul`` and ``ai.aihw::AnalogConv``: the
deterministic forward of ``ort_ops/README.md`` ("Fallback") in standard ONNX operators, so that a
stock onnxruntime *without* the op library runs an exported model.

The forward is the IO pipeline of SPEC §1 without its noise sources (no input/output/weight
noise, no programming noise, drift or compensation: the reference weights ``W``):

* tile splitting: ``W`` is cut into blocks of at most ``max_output_size`` x ``max_input_size``,
  each with its own periphery; partial outputs along K are summed digitally;
* noise management per block and row (``none | abs_max | max | average_abs_max | constant``,
  ``nm_thres``): ``s``; a block row of zeros gives 0;
* DAC: ``clip(floor(v/step + 0.5)·step, ±inp_bound)`` of ``x / (s·r)``; the product; ADC the same
  with ``out_res``/``out_bound``; the block output is ``s·r·ADC(...)``;
* bound management (``iterative``, ``iterative_worst_case``): ``r`` is the first factor of the
  chain 1, 2, 4, ... (worst case: 1, r1, 2·r1, ...) up to ``min(max_bm_factor, max_bm_res /
  inp_res)`` for which no unquantized block output reaches ``out_bound`` (else the last one);
  computed for all candidates at once, only when ``r = 1`` saturates (an ``If``);
* ``is_perfect``: ``X W^T``; then ``· out_scale`` and ``+ B``.

One function per op type serves every node: the node's attributes reach the body through
``ref_attr_name`` (specialized per node by onnxruntime), and the block structure is computed
from the shapes at run time.  Float operations follow rpucuda's order (``x · (1/(s·r))``,
``v / step``), so outputs agree with the PyTorch forward with noise off up to the summation
order of the matrix product.
"""

from typing import Any, Callable, Dict, List, Optional

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from ..simulator.parameters import IOParameters, MappingParameter
from ._attributes import DOMAIN, DOMAIN_VERSION, io_attributes

MIN_OPSET = 18  # Reduce* with axes as an input, Pad with pads as an input
FN_INPUTS = ["X", "W", "B", "seed", "t_inference"]
_MAX_POW2 = 31  # bound-management candidates 2^0 .. 2^30


class _Body:
    """Appends nodes to a (sub)graph; SSA names unique across the whole function."""

    def __init__(self, counter: List[int], prefix: str = "") -> None:
        self.nodes: List[onnx.NodeProto] = []
        self._counter = counter
        self._prefix = prefix

    def name(self, hint: str) -> str:
        self._counter[0] += 1
        return f"{self._prefix}{hint}_{self._counter[0]}"

    def op(self, op_type: str, *inputs: str, hint: Optional[str] = None, **attrs: Any) -> str:
        out = self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def const(self, value: Any, dtype=np.float32, hint: str = "c") -> str:
        arr = np.asarray(value, dtype=dtype)
        out = self.name(hint)
        self.nodes.append(helper.make_node("Constant", [], [out], value=numpy_helper.from_array(arr, out)))
        return out

    def ref(self, attr: str, kind: int) -> str:
        """A constant from the calling node's attribute ``attr``."""
        field = {AttributeProto.FLOAT: "value_float", AttributeProto.INT: "value_int",
                 AttributeProto.STRING: "value_string", AttributeProto.INTS: "value_ints"}[kind]
        out = self.name(attr)
        node = helper.make_node("Constant", [], [out])
        a = node.attribute.add()
        a.name = field
        a.type = kind
        a.ref_attr_name = attr
        self.nodes.append(node)
        return out

    def sub(self) -> "_Body":
        return _Body(self._counter, self._prefix)


def _graph(body: _Body, name: str, outputs: List[str], dtype: int = TensorProto.FLOAT) -> onnx.GraphProto:
    return helper.make_graph(body.nodes, name, [], [helper.make_tensor_value_info(o, dtype, None) for o in outputs])


def _if(b: _Body, cond: str, then_fn: Callable[[_Body], str], else_fn: Callable[[_Body], str], hint: str,
        dtype: int = TensorProto.FLOAT) -> str:
    """``If(cond)``; the branches are built by ``then_fn``/``else_fn`` (each returns its output).
    Conditions that depend only on attributes and W's shape are constants: onnxruntime's constant
    folding inlines the taken branch, so a node runs only the operators its attributes need."""
    branches = []
    for fn, name in ((then_fn, f"{hint}_then"), (else_fn, f"{hint}_else")):
        sub = b.sub()
        out = fn(sub)
        if not any(out in n.output for n in sub.nodes):  # a value from the outer scope
            out = sub.op("Identity", out, hint=f"{hint}_id")
        branches.append(_graph(sub, name, [out], dtype))
    res = b.name(hint)
    b.nodes.append(helper.make_node("If", [cond], [res], then_branch=branches[0], else_branch=branches[1]))
    return res


class _Params:
    """Attribute-derived scalars of the IO pipeline, computed once at the top of the body."""

    def __init__(self, b: _Body) -> None:
        F, I, S = AttributeProto.FLOAT, AttributeProto.INT, AttributeProto.STRING
        self.zero = b.const(0.0, hint="zero")
        self.one = b.const(1.0, hint="one")
        self.two = b.const(2.0, hint="two")
        self.half = b.const(0.5, hint="half")
        self.inf = b.const(np.inf, hint="inf")
        self.big = b.const(1.0e9, hint="big")
        self.nbig = b.const(-1.0e9, hint="nbig")
        self.is_perfect = b.op("Cast", b.ref("is_perfect", I), to=TensorProto.BOOL, hint="is_perfect")
        self.out_scale = b.ref("out_scale", F)
        self.scale_on = b.op("Not", b.op("Equal", self.out_scale, self.one), hint="scale_on")
        self.nm_thres = b.ref("nm_thres", F)
        # nm_thres > 0 caps the abs-max scale: min(s, thres_cap) with thres_cap = inf otherwise.
        self.thres_on = b.op("Greater", self.nm_thres, self.zero)
        self.thres_cap = b.op("Where", self.thres_on, self.nm_thres, self.inf)
        nm = b.ref("noise_management", S)
        self.nm = {k: b.op("Equal", nm, b.const(k, dtype=object), hint=f"nm_{k}")
                   for k in ("none", "max", "average_abs_max", "constant")}
        bm = b.ref("bound_management", S)
        self.out_bound = b.ref("out_bound", F)
        inp_bound = b.ref("inp_bound", F)
        self.inp_step, inp_frac = self._step(b, b.ref("inp_res", F), inp_bound, "inp")
        self.inp_lo, self.inp_hi = self._bounds(b, inp_bound)
        self.out_step, _ = self._step(b, b.ref("out_res", F), self.out_bound, "out")
        self.out_lo, self.out_hi = self._bounds(b, self.out_bound)
        # Bound management: r <= r_limit = min(max_bm_factor, max_bm_res / inp_res).
        frac_pos = b.op("Greater", inp_frac, self.zero)
        res_limit = b.op("Where", frac_pos, b.op("Div", b.ref("max_bm_res", F),
                                                 b.op("Where", frac_pos, inp_frac, self.one)), self.inf)
        self.r_limit = b.op("Min", b.ref("max_bm_factor", F), res_limit, hint="r_limit")
        bm_on = b.op("Not", b.op("Equal", bm, b.const("none", dtype=object)))
        self.use_bm = b.op("And", b.op("And", bm_on, b.op("Greater", self.out_bound, self.zero)),
                           b.op("Greater", self.r_limit, self.one), hint="use_bm")
        self.is_wc = b.op("Equal", bm, b.const("iterative_worst_case", dtype=object), hint="is_wc")

    def _step(self, b: _Body, res: str, bound: str, hint: str):
        # quant_step: res <= 0 -> 0; res > 1 -> 1/res; times the full range 2*bound.
        frac = b.op("Where", b.op("Greater", res, self.one), b.op("Div", self.one, res), res)
        frac = b.op("Where", b.op("LessOrEqual", res, self.zero), self.zero, frac, hint=f"{hint}_frac")
        step = b.op("Mul", b.op("Mul", frac, self.two), bound, hint=f"{hint}_step")
        return step, frac

    def _bounds(self, b: _Body, bound: str):
        pos = b.op("Greater", bound, self.zero)
        hi = b.op("Where", pos, bound, self.inf)
        return b.op("Neg", hi), hi


def _quantize(b: _Body, p: _Params, v: str, step: str, lo: str, hi: str) -> str:
    """clip(floor(clamp(v/step, ±1e9) + 0.5)·step, lo, hi); no quantization when step == 0."""
    pos = b.op("Greater", step, p.zero)
    safe = b.op("Where", pos, step, p.one)
    q = b.op("Clip", b.op("Div", v, safe), p.nbig, p.big)
    q = b.op("Mul", b.op("Floor", b.op("Add", q, p.half)), safe)
    return b.op("Clip", b.op("Where", pos, q, v), lo, hi)


def _axes(b: _Body, *axes: int) -> str:
    return b.const(list(axes), dtype=np.int64, hint="axes")


def _pipeline(b: _Body, p: _Params, X: str, W: str) -> str:
    """X [G, R, K], W [G, M, K] -> [G, R, M] (times out_scale; no bias)."""
    i64 = np.int64
    shape_w = b.op("Shape", W)
    G = b.op("Slice", shape_w, b.const([0], i64), b.const([1], i64))
    M = b.op("Slice", shape_w, b.const([1], i64), b.const([2], i64))
    K = b.op("Slice", shape_w, b.const([2], i64), b.const([3], i64))
    R = b.op("Slice", b.op("Shape", X), b.const([1], i64), b.const([2], i64))

    one_i = b.const([1], i64)
    kt = b.op("Reshape", b.ref("max_input_size", AttributeProto.INT), one_i)
    mt = b.op("Reshape", b.ref("max_output_size", AttributeProto.INT), one_i)
    kc = b.op("Min", K, kt, hint="kc")
    mc = b.op("Min", M, mt, hint="mc")
    nk = b.op("Div", b.op("Sub", b.op("Add", K, kc), one_i), kc, hint="nk")
    nm = b.op("Div", b.op("Sub", b.op("Add", M, mc), one_i), mc, hint="nm")
    kpad = b.op("Sub", b.op("Mul", nk, kc), K)
    mpad = b.op("Sub", b.op("Mul", nm, mc), M)
    single_k = b.op("Squeeze", b.op("Equal", nk, one_i), b.const([0], i64), hint="single_k")
    single = b.op("And", single_k, b.op("Squeeze", b.op("Equal", nm, one_i), b.const([0], i64)), hint="single")

    # Input blocks xb [G, nK, R, Kc] (one block: a view of X).
    def split_x(sb: _Body) -> str:
        xp = sb.op("Pad", X, sb.op("Concat", sb.const([0, 0, 0, 0, 0], i64), kpad, axis=0))
        return sb.op("Transpose", sb.op("Reshape", xp, sb.op("Concat", G, R, nk, kc, axis=0)), perm=[0, 2, 1, 3])

    xb = _if(b, single_k, lambda sb: sb.op("Unsqueeze", X, _axes(sb, 1)), split_x, "xb")
    # Weight blocks [G, nK, nM, Kc, Mc] (W only: constant-folded)
    wp = b.op("Pad", W, b.op("Concat", b.const([0, 0, 0, 0], i64), mpad, kpad, axis=0))
    wb = b.op("Reshape", wp, b.op("Concat", G, nm, mc, nk, kc, axis=0))
    wt = b.op("Transpose", wb, perm=[0, 3, 1, 4, 2], hint="wt")

    # Noise management: s [G, nK, R, 1]; a block row of zeros has s = 0 (and output 0).
    absx = b.op("Abs", xb)
    amax = b.op("ReduceMax", absx, _axes(b, -1), keepdims=1, hint="amax")

    def gated(sb: _Body, sn: str) -> str:
        return sb.op("Where", sb.op("Equal", amax, p.zero), p.zero, sn)

    def nm_max(sb: _Body) -> str:  # max x if positive, else max |x| (0 for a zero row)
        mx = sb.op("ReduceMax", xb, _axes(sb, -1), keepdims=1)
        return sb.op("Where", sb.op("Greater", mx, p.zero), mx, amax)

    def nm_avg(sb: _Body) -> str:
        return gated(sb, sb.op("Min", sb.op("ReduceMean", amax, _axes(sb, 2), keepdims=1), p.thres_cap))

    def nm_const(sb: _Body) -> str:
        return gated(sb, sb.op("Where", p.thres_on, p.nm_thres, p.one))

    s = _if(b, p.nm["average_abs_max"], nm_avg, lambda sb: sb.op("Min", amax, p.thres_cap), "s_avg")
    s = _if(b, p.nm["constant"], nm_const, lambda sb: s, "s_const")
    s = _if(b, p.nm["max"], nm_max, lambda sb: s, "s_max")
    s = _if(b, p.nm["none"], lambda sb: gated(sb, p.one), lambda sb: s, "s")
    s_safe = b.op("Where", b.op("Equal", s, p.zero), p.one, s, hint="s_safe")
    s5 = b.op("Unsqueeze", s, _axes(b, 2))  # [G, nK, 1, R, 1]

    # r = 1 for every block row.
    xq1 = _quantize(b, p, b.op("Mul", xb, b.op("Div", p.one, s_safe)), p.inp_step, p.inp_lo, p.inp_hi)
    y1 = b.op("MatMul", b.op("Unsqueeze", xq1, _axes(b, 2)), wt, hint="y1")  # [G, nK, nM, R, Mc]

    def no_saturation(sb: _Body) -> str:
        return sb.op("Mul", _quantize(sb, p, y1, p.out_step, p.out_lo, p.out_hi), s5, hint="yblk_r1")

    def bound_management(tb: _Body) -> str:
        """Every candidate factor at once; per block row the first that does not saturate."""
        pow2 = tb.const([2.0 ** j for j in range(_MAX_POW2)], hint="pow2")
        n_r = tb.op("ReduceSum", tb.op("Cast", tb.op("LessOrEqual", pow2, p.r_limit), to=TensorProto.INT64),
                    keepdims=1)
        n_r = tb.op("Max", n_r, tb.const([1], i64), hint="n_r")
        j = tb.op("Range", tb.const(0, i64), tb.op("Squeeze", n_r, tb.const([0], i64)), tb.const(1, i64), hint="j")
        j6 = tb.op("Reshape", j, tb.const([-1, 1, 1, 1, 1, 1], i64))
        first = tb.op("Equal", j6, tb.const(0, i64), hint="first")
        r_it = tb.op("Reshape", tb.op("Gather", pow2, j, axis=0), tb.const([-1, 1, 1, 1, 1, 1], i64))
        # Worst case: after r = 1, r1 = min(max(2, 2^ceil(log2(max(rw, 1)))), r_limit) with
        # rw = L1(x/s)·max|W|/out_bound per block row; then 2·r1, 4·r1, ...
        l1 = tb.op("ReduceSum", tb.op("Div", absx, s_safe), _axes(tb, -1), keepdims=1)  # [G, nK, R, 1]
        wmax = tb.op("ReduceMax", tb.op("Abs", wt), _axes(tb, -2, -1), keepdims=1)  # [G, nK, nM, 1, 1]
        rw = tb.op("Div", tb.op("Mul", tb.op("Unsqueeze", l1, _axes(tb, 2)), wmax), p.out_bound)
        v = tb.op("Max", rw, p.one)
        e = tb.op("Ceil", tb.op("Div", tb.op("Log", v), tb.const(np.log(2.0))))
        em1 = tb.op("Sub", e, p.one)
        e = tb.op("Where", tb.op("GreaterOrEqual", tb.op("Pow", p.two, em1), v), em1, e)
        e = tb.op("Where", tb.op("Less", tb.op("Pow", p.two, e), v), tb.op("Add", e, p.one), e)
        r1 = tb.op("Min", tb.op("Max", tb.op("Pow", p.two, e), p.two), p.r_limit, hint="r1")  # [G, nK, nM, R, 1]
        jm1 = tb.op("Max", tb.op("Sub", j, tb.const(1, i64)), tb.const(0, i64))
        r_wc = tb.op("Mul", r1, tb.op("Reshape", tb.op("Gather", pow2, jm1, axis=0),
                                      tb.const([-1, 1, 1, 1, 1, 1], i64)))
        r_wc = tb.op("Where", first, p.one, r_wc)
        valid_wc = tb.op("Or", first, tb.op("And", tb.op("LessOrEqual", r_wc, p.r_limit),
                                            tb.op("Greater", r_wc, p.one)))
        r_all = tb.op("Where", p.is_wc, r_wc, r_it, hint="r_all")  # [nR, G, nK, nM|1, R|1, 1]
        valid_it = tb.op("Or", first, tb.op("LessOrEqual", r_it, p.r_limit))
        valid = tb.op("Or", tb.op("And", p.is_wc, valid_wc), tb.op("And", tb.op("Not", p.is_wc), valid_it))
        xb6 = tb.op("Unsqueeze", xb, _axes(tb, 0, 3))  # [1, G, nK, 1, R, Kc]
        sr = tb.op("Mul", tb.op("Unsqueeze", s_safe, _axes(tb, 0, 3)), r_all)
        xq = _quantize(tb, p, tb.op("Mul", xb6, tb.op("Div", p.one, sr)), p.inp_step, p.inp_lo, p.inp_hi)
        y = tb.op("MatMul", xq, tb.op("Unsqueeze", wt, _axes(tb, 0)), hint="y_r")  # [nR, G, nK, nM, R, Mc]
        sat = tb.op("GreaterOrEqual", tb.op("ReduceMax", tb.op("Abs", y), _axes(tb, -1), keepdims=1), p.out_bound)
        ok = tb.op("Cast", tb.op("And", valid, tb.op("Not", sat)), to=TensorProto.FLOAT)
        valid_f = tb.op("Cast", tb.op("Expand", valid, tb.op("Shape", ok)), to=TensorProto.FLOAT)
        first_ok = tb.op("ArgMax", ok, axis=0, keepdims=1)
        last_valid = tb.op("ArgMax", valid_f, axis=0, keepdims=1, select_last_index=1)
        any_ok = tb.op("Greater", tb.op("ReduceMax", ok, _axes(tb, 0), keepdims=1), p.zero)
        idx = tb.op("Where", any_ok, first_ok, last_valid)  # [1, G, nK, nM, R, 1]
        s6 = tb.op("Unsqueeze", s, _axes(tb, 0, 3))
        yq = tb.op("Mul", _quantize(tb, p, y, p.out_step, p.out_lo, p.out_hi), tb.op("Mul", s6, r_all))
        target = tb.op("Concat", tb.const([1], i64), tb.op("Slice", tb.op("Shape", yq), tb.const([1], i64),
                                                            tb.const([6], i64)), axis=0)
        sel = tb.op("GatherElements", yq, tb.op("Expand", idx, target), axis=0)
        return tb.op("Squeeze", sel, _axes(tb, 0), hint="yblk_bm")

    sat_any = _if(b, p.use_bm, lambda sb: sb.op("GreaterOrEqual", sb.op("ReduceMax", sb.op("Abs", y1), keepdims=0),
                                                 p.out_bound), lambda sb: sb.const(False, dtype=bool), "sat_any",
                  TensorProto.BOOL)
    yblk = _if(b, sat_any, bound_management, no_saturation, "yblk")  # [G, nK, nM, R, Mc]

    # Digital sum over the K blocks, rows back to [G, R, M].
    def join_blocks(sb: _Body) -> str:
        ysum = sb.op("ReduceSum", yblk, _axes(sb, 1), keepdims=0)  # [G, nM, R, Mc]
        yflat = sb.op("Reshape", sb.op("Transpose", ysum, perm=[0, 2, 1, 3]),
                      sb.op("Concat", G, R, sb.op("Mul", nm, mc), axis=0))
        return sb.op("Slice", yflat, sb.const([0], i64), M, sb.const([2], i64))

    y_analog = _if(b, single, lambda sb: sb.op("Squeeze", yblk, _axes(sb, 1, 2)), join_blocks, "y_analog")

    # is_perfect: the exact product (no splitting), as rpucuda does.  (All Ifs of the body sit at
    # its top level: onnxruntime's constant folding of nested Ifs in inlined functions crashed.)
    y = _if(b, p.is_perfect, lambda sb: sb.op("MatMul", X, sb.op("Transpose", W, perm=[0, 2, 1])),
            lambda sb: y_analog, "y_pipeline")
    return _if(b, p.scale_on, lambda sb: sb.op("Mul", y, p.out_scale), lambda sb: y, "y_scaled")


def _defaults() -> List[AttributeProto]:
    vals: Dict[str, Any] = io_attributes(IOParameters())
    m = MappingParameter()
    vals["max_input_size"] = int(m.max_input_size)
    vals["max_output_size"] = int(m.max_output_size)
    return [helper.make_attribute(k, v) for k, v in vals.items()]


def _function(name: str, body: _Body, outputs: List[str], opset: int, extra_attrs: List[str],
              extra_defaults: List[AttributeProto]) -> onnx.FunctionProto:
    f = onnx.FunctionProto()
    f.domain = DOMAIN
    f.name = name
    f.input.extend(FN_INPUTS)
    f.output.extend(outputs)
    f.node.extend(body.nodes)
    f.opset_import.extend([helper.make_opsetid("", opset)])
    f.attribute.extend(extra_attrs)
    f.attribute_proto.extend(_defaults() + extra_defaults)
    f.doc_string = (f"Deterministic fallback of {DOMAIN}::{name} (noise-free, quantized, clipped IO pipeline on "
                    "the reference weights); onnxruntime runs the aihw-deploy op library's kernel instead "
                    "when the library is registered.")
    return f


def analog_matmul_function(opset: int) -> onnx.FunctionProto:
    """``AnalogMatMul(X [*, K], W [M, K], B [M]) -> Y [*, M]``."""
    i64 = np.int64
    b = _Body([0])
    p = _Params(b)
    shape_x = b.op("Shape", "X")
    lead = b.op("Slice", shape_x, b.const([0], i64), b.const([-1], i64))
    k = b.op("Slice", b.op("Shape", "W"), b.const([1], i64), b.const([2], i64))
    m = b.op("Slice", b.op("Shape", "W"), b.const([0], i64), b.const([1], i64))
    x3 = b.op("Reshape", "X", b.op("Concat", b.const([1, -1], i64), k, axis=0))
    w3 = b.op("Unsqueeze", "W", _axes(b, 0))
    y3 = _pipeline(b, p, x3, w3)
    y = b.op("Reshape", y3, b.op("Concat", lead, m, axis=0))
    b.nodes.append(helper.make_node("Add", [y, "B"], ["Y"]))
    return _function("AnalogMatMul", b, ["Y"], opset, [], [])


def analog_conv_function(opset: int) -> onnx.FunctionProto:
    """``AnalogConv(X [N, C, *S], W [M, C/group, *k], B [M]) -> Y [N, M, *S_out]``: im2col by a
    convolution with one-hot kernels (exact: one product by 1 per output), one tile per group."""
    i64 = np.int64
    b = _Body([0])
    p = _Params(b)
    shape_w = b.op("Shape", "W")
    m = b.op("Slice", shape_w, b.const([0], i64), b.const([1], i64))
    ktail = b.op("Slice", shape_w, b.const([1], i64), b.const([100], i64))  # [C/g, *k]
    kc = b.op("ReduceProd", ktail, keepdims=1, hint="kc")
    g = b.op("Reshape", b.ref("group", AttributeProto.INT), b.const([1], i64), hint="g")
    eye = b.op("EyeLike", b.op("ConstantOfShape", b.op("Concat", kc, kc, axis=0),
                               value=numpy_helper.from_array(np.zeros(1, np.float32))))
    eye = b.op("Reshape", eye, b.op("Concat", kc, ktail, axis=0))
    ones = b.op("ConstantOfShape", b.op("Shape", ktail), value=numpy_helper.from_array(np.ones(1, np.int64)))
    kernel = b.op("Tile", eye, b.op("Concat", g, ones, axis=0), hint="unfold_kernel")  # [g*Kc, C/g, *k]
    conv = helper.make_node("Conv", ["X", kernel], [b.name("patches")])
    for attr, kind in (("strides", AttributeProto.INTS), ("pads", AttributeProto.INTS),
                       ("dilations", AttributeProto.INTS), ("group", AttributeProto.INT)):
        a = conv.attribute.add()
        a.name, a.type, a.ref_attr_name = attr, kind, attr
    b.nodes.append(conv)
    patches = conv.output[0]  # [N, g*Kc, *S_out]
    shape_p = b.op("Shape", patches)
    n = b.op("Slice", shape_p, b.const([0], i64), b.const([1], i64))
    s_out = b.op("Slice", shape_p, b.const([2], i64), b.const([100], i64))
    cols = b.op("Reshape", patches, b.op("Concat", n, g, kc, b.const([-1], i64), axis=0))  # [N, g, Kc, L]
    cols = b.op("Transpose", cols, perm=[1, 0, 3, 2])  # [g, N, L, Kc]
    x3 = b.op("Reshape", cols, b.op("Concat", g, b.const([-1], i64), kc, axis=0))
    w3 = b.op("Reshape", "W", b.op("Concat", g, b.const([-1], i64), kc, axis=0))
    y3 = _pipeline(b, p, x3, w3)  # [g, N*L, M/g]
    mg = b.op("Slice", b.op("Shape", y3), b.const([2], i64), b.const([3], i64))
    y4 = b.op("Reshape", y3, b.op("Concat", g, n, b.const([-1], i64), mg, axis=0))  # [g, N, L, M/g]
    y4 = b.op("Transpose", y4, perm=[1, 0, 3, 2])  # [N, g, M/g, L]
    y = b.op("Reshape", y4, b.op("Concat", n, m, s_out, axis=0))
    bshape = b.op("Concat", b.const([1], i64), m, ones, axis=0)  # ones: one per spatial dim plus one
    bshape = b.op("Slice", bshape, b.const([0], i64), b.const([-1], i64))
    b.nodes.append(helper.make_node("Add", [y, b.op("Reshape", "B", bshape)], ["Y"]))
    return _function("AnalogConv", b, ["Y"], opset, ["kernel_shape", "strides", "pads", "dilations"],
                     [helper.make_attribute("group", 1)])


def functions_for(model: onnx.ModelProto, opset: int) -> List[onnx.FunctionProto]:
    """The fallback functions of the ai.aihw op types used in ``model``."""
    used = {n.op_type for n in model.graph.node if n.domain == DOMAIN}
    out = []
    if "AnalogMatMul" in used:
        out.append(analog_matmul_function(opset))
    if "AnalogConv" in used:
        out.append(analog_conv_function(opset))
    return out


def fallback_model(w: np.ndarray, opset: int = 20, **attrs: Any) -> onnx.ModelProto:
    """A one-node model ``Y = AnalogMatMul(X [N, K], W)`` with the fallback function (for
    benchmarks and tests); ``attrs`` override the default IO attributes."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"fallback_model: w must be 2-D [M, K], got shape {w.shape}")
    m, k = w.shape
    node_attrs: Dict[str, Any] = io_attributes(IOParameters())
    node_attrs.update(max_input_size=512, max_output_size=512, noise_model="none", seeds=[0])
    node_attrs.update(attrs)
    node = helper.make_node("AnalogMatMul", ["X", "W", "B"], ["Y"], domain=DOMAIN, **node_attrs)
    graph = helper.make_graph([node], "analog_matmul",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", m])],
                              [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.zeros(m, np.float32), "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    helper.make_opsetid(DOMAIN, DOMAIN_VERSION)],
                              functions=[analog_matmul_function(opset)], ir_version=10)
    return model
