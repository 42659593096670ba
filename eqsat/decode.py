"""Reading a saturated e-graph back: typed e-classes, the original graph's choices, and decoding.

:class:`View` parses egglog's serialized JSON (the extraction-gym format) against an
:class:`~eqsat.encode.Encoding`: every tensor e-node is decoded into its op, attributes and input
e-classes; every tensor e-class gets a type (shape, dtype) by running the op table's shape rules over
the e-graph, which also rejects e-nodes whose inferred type disagrees with their e-class (a rule that
is not shape-correct cannot be extracted). :meth:`View.decode` rebuilds a :class:`Graph` from one
choice of e-node per e-class through the builder, so shapes are checked again and nodes whose inputs
are all constants fold at compile time.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from eqsat import ops
from eqsat.egraph import attr_key, spec
from eqsat.encode import Encoding
from eqsat.errors import EqsatError
from eqsat.ir import Graph, Value
from eqsat.ops.fused import DOMAIN, FUSED_OPS, canonical_elementwise
from eqsat.ops.layout import LAYOUT_OPS

TensorType = tuple[tuple[int, ...], np.dtype]
LEAF_KINDS = ("input", "const", "none")
# Constant e-classes up to this many elements are evaluated so shape rules can read them.
EVAL_LIMIT = 1 << 16


@dataclass
class ENode:
    """A decoded tensor e-node."""

    id: str
    eclass: str
    kind: str  # "input" | "const" | "none" | "out" | "op"
    op: str = ""
    name: str = ""  # input name or constant key
    attrs: dict[str, Any] = field(default_factory=dict)
    inputs: list[str | None] = field(default_factory=list)  # e-classes; None for omitted
    mask: str = "1"
    index: int = 0  # output index of an "out" projection


class View:
    """The tensor part of a serialized e-graph, typed and indexed."""

    def __init__(self, serialized: dict[str, Any], enc: Encoding):
        self.json = serialized
        self.enc = enc
        raw = serialized["nodes"]
        self.raw = raw
        self._list_memo: dict[str, list[str | None]] = {}
        self._children: dict[str, list[str]] = {}
        self.nodes: dict[str, ENode] = {}
        self.classes: dict[str, list[str]] = {}
        for nid, node in raw.items():
            decoded = self._decode_node(nid, node)
            if decoded is not None:
                self.nodes[nid] = decoded
                self.classes.setdefault(decoded.eclass, []).append(nid)
        self.types: dict[str, Any] = {}
        self.invalid: set[str] = set()
        self.const_classes: set[str] = set()
        self._const_values: dict[str, np.ndarray | None] = {}
        self._seed_types()
        self.locate(enc.graph)
        self._infer_types()
        self._find_constants()

    # ------------------------------------------------------------------ parsing
    def _cls(self, nid: str) -> str:
        return self.raw[nid]["eclass"]

    def _literal(self, nid: str) -> str:
        return self.raw[nid]["op"]

    def _string(self, nid: str) -> str:
        text = self.raw[nid]["op"]
        return text[1:-1] if "\\" not in text else json.loads(text)

    def _attr(self, nid: str) -> Any:
        node = self.raw[nid]
        op, kids = node["op"], node["children"]
        if op == "Attr.none":
            return None
        if op == "Attr.int":
            return int(self._literal(kids[0]))
        if op == "Attr.float":
            return float(self._literal(kids[0]))
        if op == "Attr.str":
            return self._string(kids[0])
        if op == "Attr.ints":
            return [int(self._literal(k)) for k in self.raw[kids[0]]["children"]]
        if op == "Attr.key":
            return self.enc.attr_values[self._string(kids[0])]
        raise EqsatError(f"cannot decode attribute node {op}")

    def _tlist(self, nid: str) -> list[str | None]:
        return self._list_items(self._cls(nid), set())

    def _list_items(self, eclass: str, seen: set[str]) -> list[str | None]:
        # A list e-class may hold TList.append nodes (fusion rules) that saturation has not
        # turned into a cons chain yet: read a cons/nil node if there is one, else concatenate.
        if not hasattr(self, "_list_classes"):
            self._list_classes: dict[str, list[str]] = {}
            for k, v in self.raw.items():
                if v["op"].startswith("TList.") or v["op"].endswith(".append"):
                    self._list_classes.setdefault(v["eclass"], []).append(k)
        known = self._list_memo.get(eclass)
        if known is not None:
            return known
        if eclass in seen:
            raise EqsatError(f"list e-class {eclass} contains itself")
        seen = seen | {eclass}
        nodes = [self.raw[n] for n in self._list_classes.get(eclass, [])]
        found: list[str | None] | None = None
        if any(node["op"] == "TList.nil" for node in nodes):
            found = []
        for node in nodes:
            if found is None and node["op"] == "TList.cons":
                head, tail = node["children"]
                found = [self._cls(head), *self._list_items(self._cls(tail), seen)]
        for node in nodes:
            if found is None and node["op"].endswith(".append"):
                first, second = (self._cls(k) for k in node["children"])
                found = self._list_items(first, seen) + self._list_items(second, seen)
        if found is None:
            raise EqsatError(f"list e-class {eclass} has no cons, nil or append node")
        self._list_memo[eclass] = found
        return found

    def _decode_node(self, nid: str, node: dict[str, Any]) -> ENode | None:
        op, kids, eclass = node["op"], node["children"], node["eclass"]
        if op == "T.input":
            return ENode(nid, eclass, "input", name=self._string(kids[0]))
        if op == "T.const":
            return ENode(nid, eclass, "const", name=self._string(kids[0]))
        if op == "T.none":
            return ENode(nid, eclass, "none")
        if op.endswith(".out") and len(kids) == 2:
            return ENode(
                nid, eclass, "out", inputs=[self._cls(kids[0])], index=int(self._literal(kids[1]))
            )
        if not eclass.split("-", 1)[0].endswith(".T") or not ops.is_supported(op):
            return None
        s = spec(op)
        pos = 0
        if s.variadic:
            inputs = self._tlist(kids[0])
            pos = 1
        else:
            inputs = [self._cls(k) for k in kids[: s.num_inputs]]
            pos = s.num_inputs
        attrs = {name: self._attr(k) for name, k in zip(s.attrs, kids[pos:], strict=False)}
        pos += len(s.attrs)
        mask = self._string(kids[pos]) if s.multi_output else "1"
        return ENode(nid, eclass, "op", op=op, attrs=attrs, inputs=inputs, mask=mask)

    def is_none(self, eclass: str | None) -> bool:
        if not hasattr(self, "_none_classes"):
            self._none_classes = {n.eclass for n in self.nodes.values() if n.kind == "none"}
        return eclass is None or eclass in self._none_classes

    def op_inputs(self, node: ENode) -> list[str | None]:
        return [None if self.is_none(c) else c for c in node.inputs]

    # ------------------------------------------------------------------ types
    def _seed_types(self) -> None:
        self.original: dict[int, str] = {}  # id(Value) -> e-class
        self.original_node: dict[str, str] = {}  # e-class -> node id of its first IR value
        self.value_node: dict[int, str] = {}  # id(Value) -> the e-node that encodes it
        self.node_index: dict[tuple, str] = {}
        for nid, node in self.nodes.items():
            self.node_index[self._signature(node)] = nid

    def _signature(self, node: ENode) -> tuple:
        attrs = tuple(sorted((k, _hashable(v)) for k, v in node.attrs.items()))
        inputs = [None if self.is_none(c) else c for c in node.inputs]
        while inputs and inputs[-1] is None:
            inputs.pop()
        return (node.kind, node.op, node.name, attrs, tuple(inputs), node.mask, node.index)

    def locate(self, graph: Graph) -> None:
        """Find the e-class and original e-node of every value of ``graph`` (the encoded one)."""
        for value in graph.inputs:
            if value.const is None:
                self._locate_leaf(value, "input", value.name)
        for node in graph.nodes:
            if all(v is None or v.const is not None for v in node.outputs):
                continue
            ins = [None if v is None else self._class_of(v) for v in self.enc.node_inputs[id(node)]]
            mask = "".join("0" if v is None else "1" for v in node.outputs)
            probe = ENode("", "", "op", op=node.op, attrs=node.attrs, inputs=ins, mask=mask)
            nid = self.node_index.get(self._signature(probe))
            if nid is None:
                raise EqsatError(f"node {node.name!r} ({node.op}) not found in the e-graph")
            if mask == "1":
                self._assign(node.outputs[0], nid)
                continue
            tup = self._cls(nid)
            self.original_node.setdefault(tup, nid)
            for i, v in enumerate(node.outputs):
                if v is not None:
                    probe = ENode("", "", "out", inputs=[tup], index=i)
                    self._assign(v, self.node_index[self._signature(probe)])
        for value in graph.outputs:
            self._class_of(value)

    def _assign(self, value: Value, nid: str) -> None:
        self.value_node[id(value)] = nid
        eclass = self.nodes[nid].eclass
        self.original[id(value)] = eclass
        self.original_node.setdefault(eclass, nid)
        self.types.setdefault(eclass, (value.shape, value.dtype))

    def _locate_leaf(self, value: Value, kind: str, name: str) -> str:
        probe = ENode("", "", kind, name=name)
        nid = self.node_index[self._signature(probe)]
        self._assign(value, nid)
        return self.nodes[nid].eclass

    def _class_of(self, value: Value) -> str:
        found = self.original.get(id(value))
        if found is not None:
            return found
        key = self.enc.const_keys.get(id(value))
        if key is None:
            raise EqsatError(f"value {value.name!r} is not in the e-graph")
        return self._locate_leaf(value, "const", key)

    def _infer_types(self) -> None:
        self._const_like = {n.eclass for n in self.nodes.values() if n.kind == "const"}
        for _nid, node in self.nodes.items():
            if node.kind == "input":
                v = self.enc.graph[node.name]
                self.types.setdefault(node.eclass, (v.shape, v.dtype))
            elif node.kind == "const":
                a = self.enc.constants[node.name]
                self.types.setdefault(node.eclass, (tuple(a.shape), a.dtype))
        # Worklist in dependency order: a node is inferred once all its inputs have a type.
        waiting: dict[str, list[ENode]] = {}
        missing: dict[str, int] = {}
        ready: list[ENode] = []
        for node in self.nodes.values():
            if node.kind not in ("op", "out"):
                continue
            deps = {c for c in self.children(node) if c not in self.types}
            missing[node.id] = len(deps)
            for c in deps:
                waiting.setdefault(c, []).append(node)
            if not deps:
                ready.append(node)
        memo: dict[tuple, Any] = {}
        while ready:
            node = ready.pop()
            inferred = self._infer_memo(node, memo)
            if inferred is None or inferred is _UNKNOWN:
                self.invalid.add(node.id)
                continue
            known = self.types.get(node.eclass)
            if known is None:
                self.types[node.eclass] = inferred
                for other in waiting.pop(node.eclass, ()):
                    missing[other.id] -= 1
                    if missing[other.id] == 0:
                        ready.append(other)
            elif not _same_type(known, inferred):
                self.invalid.add(node.id)
        # inputs of unknown type (never inferred): cannot be priced
        self.invalid.update(nid for nid, count in missing.items() if count)

    def _infer_memo(self, node: ENode, memo: dict[tuple, Any]) -> Any:
        """:meth:`_infer`, once per op, attributes and input types (and constant inputs)."""
        if node.kind != "op":
            return self._infer(node)
        key_ins = []
        for c in self.op_inputs(node):
            t = None if c is None else self.types.get(c)
            if c is not None and (t is None or isinstance(t, list) or c in self._const_like):
                key_ins.append(c)  # a constant's value may matter (shapes, axes)
            else:
                key_ins.append(None if t is None else (t[0], t[1].str))
        try:
            key = (node.op, tuple(sorted((k, _hashable(v)) for k, v in node.attrs.items())),
                   tuple(key_ins), node.mask)  # fmt: skip
            hash(key)
        except TypeError:
            return self._infer(node)
        if key not in memo:
            memo[key] = self._infer(node)
        return memo[key]

    def _fake(self, eclass: str | None) -> Value | object | None:
        if eclass is None:
            return None
        t = self.types.get(eclass)
        if t is None or isinstance(t, list):
            return _UNKNOWN
        shape, dt = t
        const = None
        if math.prod(shape) <= EVAL_LIMIT:
            const = self.const_value(eclass)
        return Value(f"c{eclass}", tuple(shape), np.dtype(dt), const)

    def _infer(self, node: ENode) -> Any:
        if node.kind == "out":
            t = self.types.get(node.inputs[0])
            if t is None:
                return _UNKNOWN
            if not isinstance(t, list) or node.index >= len(t) or t[node.index] is None:
                return None
            return t[node.index]
        fakes = [self._fake(c) for c in self.op_inputs(node)]
        if any(f is _UNKNOWN for f in fakes):
            return _UNKNOWN
        opdef = ops.get(node.op)
        try:
            types = opdef.infer(fakes, dict(node.attrs), len(node.mask))  # type: ignore[arg-type]
        except Exception:
            return None
        types = [None if m == "0" else t for m, t in zip(node.mask, types, strict=False)]
        if node.mask == "1":
            return (tuple(types[0][0]), np.dtype(types[0][1])) if types[0] else None
        return [None if t is None else (tuple(t[0]), np.dtype(t[1])) for t in types]

    # ------------------------------------------------------------------ constants
    def _find_constants(self) -> None:
        """E-classes computable at compile time: a constant, or a pure op on such classes."""
        const = self.const_classes
        users: dict[str, list[ENode]] = {}
        stack: list[str] = []
        for node in self.nodes.values():
            if node.id in self.invalid or node.kind in ("input", "none"):
                continue
            if node.kind == "op" and not ops.get(node.op).pure:
                continue
            for c in self.children(node):
                users.setdefault(c, []).append(node)
            if (node.kind == "const" or self.is_const_node(node)) and node.eclass not in const:
                const.add(node.eclass)
                stack.append(node.eclass)
        while stack:
            for node in users.get(stack.pop(), ()):
                if node.eclass not in const and self.is_const_node(node):
                    const.add(node.eclass)
                    stack.append(node.eclass)

    def is_const_node(self, node: ENode) -> bool:
        ins = self.op_inputs(node) if node.kind == "op" else node.inputs
        return all(c is None or c in self.const_classes for c in ins)

    def const_value(self, eclass: str) -> np.ndarray | None:
        """The content of a constant e-class (small ones only), or None."""
        if eclass in self._const_values:
            return self._const_values[eclass]
        self._const_values[eclass] = None  # guards against cycles while evaluating
        result = None
        for nid in self.classes.get(eclass, []):
            node = self.nodes[nid]
            if node.kind == "const":
                result = self.enc.constants[node.name]
                break
        self._const_values[eclass] = result
        return result

    # ------------------------------------------------------------------ extraction input
    def tensor_egraph(
        self, cost: dict[str, float], keep: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """The tensor e-nodes reachable from the roots as a serialized e-graph of their own.

        Each node's children are its input e-classes (one node of each stands for it, as the
        format names children by node), with attribute values, primitives and input lists left
        out: they cost nothing and decoding reads them from this view. Nodes of infinite cost are
        dropped (and nodes that need a class left with no node), except the nodes of ``keep``
        (e-class -> node, e.g. the original graph's choices) so that those can still be priced.
        Extractors then work on a few thousand nodes instead of every egglog table entry.
        """
        keep_ids = set(keep.values()) if keep else set()
        candidates: dict[str, list[str]] = {}
        for c in self._reachable_classes():
            ids = [
                nid
                for nid in self.classes.get(c, ())
                if nid in keep_ids or (nid not in self.invalid and cost.get(nid, 0.0) < math.inf)
            ]
            if ids:
                candidates[c] = ids
        changed = True
        while changed:  # drop nodes whose inputs lost every node, then their classes
            changed = False
            for c in list(candidates):
                ids = [
                    nid
                    for nid in candidates[c]
                    if nid in keep_ids
                    or all(k in candidates for k in self.children(self.nodes[nid]))
                ]
                if len(ids) != len(candidates[c]):
                    changed = True
                    if ids:
                        candidates[c] = ids
                    else:
                        del candidates[c]
        rep = {c: ids[0] for c, ids in candidates.items()}
        nodes: dict[str, Any] = {}
        for c, ids in candidates.items():
            for nid in ids:
                node = self.nodes[nid]
                kids = [rep[k] for k in self.children(node) if k in rep]
                label = node.op or node.kind
                nodes[nid] = {
                    "op": label,
                    "children": kids,
                    "eclass": c,
                    "cost": cost.get(nid, 0.0),
                }
        return {"nodes": nodes, "root_eclasses": self.roots(), "class_data": {}}

    def _reachable_classes(self) -> list[str]:
        seen: dict[str, None] = {}
        stack = list(self.roots())
        while stack:
            c = stack.pop()
            if c in seen:
                continue
            seen[c] = None
            for nid in self.classes.get(c, ()):
                stack.extend(k for k in self.children(self.nodes[nid]) if k not in seen)
        return list(seen)

    # ------------------------------------------------------------------ decoding
    def roots(self) -> list[str]:
        return [self.original[id(v)] for v in self.enc.graph.outputs]

    def original_choices(self) -> dict[str, str]:
        """One e-node per e-class that rebuilds the input graph (each class's earliest value)."""
        choices: dict[str, str] = {}
        for nid, raw in self.raw.items():
            node = self.nodes.get(nid)
            if (node is None and is_plain(raw)) or (node is not None and node.kind == "none"):
                choices.setdefault(raw["eclass"], nid)
        choices.update(self.original_node)
        return choices

    def children(self, node: ENode) -> list[str]:
        """E-classes an e-node needs decoded first."""
        known = self._children.get(node.id)
        if known is None:
            if node.kind == "op":
                known = [c for c in self.op_inputs(node) if c is not None]
            else:
                known = list(node.inputs) if node.kind == "out" else []
            if node.id:
                self._children[node.id] = known
        return known

    def decode(self, choices: dict[str, str]) -> Graph:
        """Rebuild a Graph from one chosen e-node per e-class (shapes re-inferred by the builder)."""
        src = self.enc.graph
        g = Graph(src.name)
        g.opset = src.opset
        namer = _Namer(g, self._preferred_names(), {v.name for v in src.outputs})
        done: dict[str, Value] = {}
        tuples: dict[str, list[Value | None]] = {}
        for v in src.inputs:
            nv = g.input(v.name, v.shape, v.dtype)
            nv.const = v.const
        for root in self.roots():
            stack = [root]
            entered: set[str] = set()
            while stack:
                c = stack[-1]
                if c in done or c in tuples:
                    stack.pop()
                    continue
                node = self._chosen(choices, c)
                deps = [d for d in self.children(node) if d not in done and d not in tuples]
                if deps:
                    if c in entered:
                        raise EqsatError(f"the chosen e-nodes form a cycle through e-class {c}")
                    entered.add(c)
                    stack.extend(deps)
                    continue
                stack.pop()
                self._build(g, node, done, tuples, choices, namer)
        for v in src.outputs:
            value = done[self.original[id(v)]]
            g.output(value, v.name)
        g.fold_constants()
        return g

    def _chosen(self, choices: dict[str, str], eclass: str) -> ENode:
        nid = choices.get(eclass)
        if nid is None or nid not in self.nodes:
            raise EqsatError(f"no tensor e-node chosen for e-class {eclass}")
        if nid in self.invalid:
            raise EqsatError(f"the chosen e-node {nid} is not shape-correct")
        return self.nodes[nid]

    def _build(
        self, g: Graph, node: ENode, done: dict, tuples: dict, choices: dict, namer: _Namer
    ) -> None:
        c = node.eclass
        if node.kind == "input":
            done[c] = g[node.name]
        elif node.kind == "const":
            done[c] = g.constant(self.enc.constants[node.name], namer.name(c, node.name))
        elif node.kind == "out":
            outs = tuples[node.inputs[0]]
            value = outs[node.index] if node.index < len(outs) else None
            if value is None:
                raise EqsatError(f"e-class {c} projects an output its node does not produce")
            done[c] = value
        elif node.kind == "op":
            ins = [None if i is None else done[i] for i in self.op_inputs(node)]
            while ins and ins[-1] is None:  # trailing omitted optional inputs
                ins.pop()
            op, ins, attrs, domain = canonical_fused(node.op, ins, dict(node.attrs))
            node_name = g.fresh_node_name(op)
            if node.mask == "1":
                out_names: list[str | None] = [namer.name(c, node_name)]
            else:
                out_names = []
                for i, m in enumerate(node.mask):
                    proj = self.node_index.get(("out", "", "", (), (c,), "1", i))
                    pc = self.nodes[proj].eclass if proj else None
                    if m == "0":
                        out_names.append("")
                    elif pc is not None and choices.get(pc) == proj:
                        out_names.append(namer.name(pc, f"{node_name}_out{i}"))
                    else:  # that output's e-class is built from another node: no name of its own
                        out_names.append(namer.name(None, f"{node_name}_out{i}"))
            built = g.add_node(op, ins, out_names, attrs, name=node_name, domain=domain)
            if node.mask == "1":
                done[c] = built.outputs[0]
            else:
                tuples[c] = built.outputs
        else:
            raise EqsatError(f"cannot decode e-node {node.id} ({node.kind})")

    def _preferred_names(self) -> dict[str, str]:
        src = self.enc.graph
        names: dict[str, str] = {}
        taken = {v.name for v in src.outputs} | {v.name for v in src.inputs}
        for v in src.outputs:
            names.setdefault(self.original[id(v)], v.name)
        for v in src.values.values():
            c = self.original.get(id(v))
            if c is not None and c not in names and v.name not in taken:
                names[c] = v.name
                taken.add(v.name)
        return names


class _Namer:
    """Value names for a decoded graph: each e-class's preferred name (the source graph's name of
    one of its values) where it is free, else a fresh one; the source's output names are reserved
    for the e-classes of those outputs, so that :meth:`Graph.output` can always give them."""

    def __init__(self, g: Graph, preferred: dict[str, str], reserved: set[str]):
        self.g = g
        self.preferred = preferred
        self.reserved = reserved
        self._next: dict[str, int] = {}

    def name(self, eclass: str | None, hint: str) -> str:
        wanted = self.preferred.get(eclass, hint) if eclass is not None else hint
        # Only an output's own e-class gets that output's name (it is preferred by no other).
        own = eclass is not None and self.preferred.get(eclass) == wanted
        if self.g.lookup(wanted) is None and (own or wanted not in self.reserved):
            return wanted
        k = self._next.get(wanted, 0)
        while True:
            k += 1
            candidate = f"{wanted}_{k}"
            if candidate not in self.reserved and self.g.lookup(candidate) is None:
                self._next[wanted] = k
                return candidate


def canonical_fused(
    op: str, ins: list[Value | None], attrs: dict[str, Any]
) -> tuple[str, list[Value | None], dict[str, Any], str]:
    """A node as it is built, with its domain: eqsat's own ops (fused, channels-last) are in
    :data:`~eqsat.ops.fused.DOMAIN`; a fused elementwise kernel reads repeated inputs once, and
    one of a single op on distinct operands is that plain op."""
    if op in LAYOUT_OPS:
        return op, ins, attrs, DOMAIN
    if op not in FUSED_OPS:
        return op, ins, attrs, ""
    if op == "FusedElementwise":
        op, ins, attrs = canonical_elementwise(ins, attrs)
        return op, ins, attrs, DOMAIN if op == "FusedElementwise" else ""
    return op, ins, attrs, DOMAIN


def is_plain(raw: dict[str, Any]) -> bool:
    """Attribute values, primitives and input lists: the non-tensor e-nodes tensors refer to."""
    op = raw["op"]
    return not raw["children"] or op.startswith(("Attr.", "TList.")) or op == "Vec"


# egglog functions of the encoding that are facts about tensors, not parts of them.
ANALYSIS_FUNCTIONS = frozenset(
    {
        "shape",
        "dtype",
        "splat",
        "int_values",
        "is_const",
        "static_shape",
        "lossless",
        "arity",
        "dtype_name",
    }
)


def prune(serialized: dict[str, Any]) -> dict[str, Any]:
    """The serialized e-graph without the analysis functions' entries (no tensor uses them)."""
    nodes = {k: v for k, v in serialized["nodes"].items() if v["op"] not in ANALYSIS_FUNCTIONS}
    used = {v["eclass"] for v in nodes.values()}
    class_data = {k: v for k, v in serialized.get("class_data", {}).items() if k in used}
    return {**serialized, "nodes": nodes, "class_data": class_data}


class _Unknown:
    pass


_UNKNOWN = _Unknown()


def _hashable(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, np.ndarray | Graph):
        return attr_key(value)
    if isinstance(value, float) and value != value:
        return "nan"
    return value


def _same_type(a: Any, b: Any) -> bool:
    if isinstance(a, list) or isinstance(b, list):
        return (
            isinstance(a, list)
            and isinstance(b, list)
            and len(a) == len(b)
            and all(x is None or y is None or _same_type(x, y) for x, y in zip(a, b, strict=True))
        )
    return tuple(a[0]) == tuple(b[0]) and np.dtype(a[1]) == np.dtype(b[1])
