//! Which channels can be pruned, and what else each removal touches.
//!
//! Every output channel of a dense or (ungrouped) convolution layer is a *unit*. Units are
//! traced element by element through the graph: channel-wise operators (activations, batch
//! norms, pools, depthwise convolutions) carry them, layout operators (reshape, flatten,
//! transpose, concat, pad) move them, and a residual `Add` ties the units it sums into one
//! *item* that can only be removed as a whole. Units that reach the model output, a softmax
//! or an operator that mixes channels in a way surgery cannot follow are frozen.
//!
//! The result says, for every value, which unit each element comes from, along which axis
//! those units vary (so the value's pruned shape follows), and which items exist per layer.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use crate::ir::{Activation, Graph, Op};
use crate::ops;

/// Label of an element that comes from no prunable unit.
pub const NO_UNIT: u32 = u32::MAX;

/// One output channel of a producing layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unit {
    /// Index of the producing node.
    pub node: usize,
    /// Output channel.
    pub channel: usize,
}

/// Units that must be removed together (one unit, or the same residual channel across the
/// layers an `Add` sums).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Its units.
    pub units: Vec<usize>,
    /// Index into [`Structure::layers`].
    pub layer: usize,
    /// Cannot be removed (reaches the output, a softmax, ...).
    pub frozen: bool,
}

/// The items that share a set of producers: what "a layer" means for per-layer ratios.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// Names of the producing nodes, joined by `+`.
    pub name: String,
    /// Producing nodes.
    pub producers: Vec<usize>,
    /// Its items, in channel order.
    pub items: Vec<usize>,
}

impl Layer {
    /// Items that may be removed.
    pub fn prunable<'a>(&'a self, s: &'a Structure) -> impl Iterator<Item = usize> + 'a {
        self.items
            .iter()
            .copied()
            .filter(move |&i| !s.items[i].frozen)
    }
}

/// Per value: the unit of each element, and the axis along which they vary.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Labels {
    /// Unit per element (`NO_UNIT` for none); empty when no element has one.
    pub unit: Vec<u32>,
    /// Axis along which units vary; every slice across it has one label.
    pub axis: usize,
    /// The value is a positively homogeneous, channel-independent function of its units'
    /// pre-activations (ReLU, pools, layout moves): merging one unit into another scales
    /// through it exactly.
    pub homogeneous: bool,
}

impl Labels {
    /// True if no element comes from a unit.
    pub fn is_empty(&self) -> bool {
        self.unit.is_empty()
    }
}

/// The prunable structure of a graph.
#[derive(Debug, Clone)]
pub struct Structure {
    /// Every unit.
    pub units: Vec<Unit>,
    /// The item each unit belongs to.
    pub item_of_unit: Vec<usize>,
    /// Every item.
    pub items: Vec<Item>,
    /// Items grouped by their producers.
    pub layers: Vec<Layer>,
    /// Per value id.
    pub labels: Vec<Labels>,
}

impl Structure {
    /// Trace the units of a checked graph.
    pub fn analyse(g: &Graph) -> Self {
        let mut t = Tracer {
            units: Vec::new(),
            parent: Vec::new(),
            frozen: Vec::new(),
            labels: alloc::vec![Labels::default(); g.values.len()],
        };
        for (i, node) in g.nodes.iter().enumerate() {
            let out = node.output;
            let shape = g.shape(out);
            let input = node.inputs[0];
            t.labels[out] = match &node.op {
                Op::Dense(d) => t.produce(i, d.units, shape, d.activation),
                Op::Conv2d(c) if c.groups == 1 => {
                    // Surgery removes input channels of a convolution, so its units must vary by channel.
                    if t.labels[input].axis != 1 {
                        t.freeze_value(input);
                    }
                    t.produce(i, c.out_channels, shape, c.activation)
                }
                Op::Conv2d(c) if c.groups == c.in_channels && c.out_channels == c.in_channels => {
                    let mut l = t.channelwise(g, input, shape);
                    l.homogeneous = false;
                    l
                }
                Op::Conv2d(_) | Op::Softmax { .. } => {
                    t.freeze_value(input);
                    Labels::default()
                }
                Op::BatchNorm(_) => {
                    let mut l = t.channelwise(g, input, shape);
                    l.homogeneous = false;
                    l
                }
                Op::Activation(a) => {
                    let mut l = t.labels[input].clone();
                    l.homogeneous &= positively_homogeneous(*a);
                    l
                }
                Op::MaxPool(_) | Op::AveragePool(_) | Op::GlobalAveragePool => {
                    t.channelwise(g, input, shape)
                }
                Op::Add => t.add(node.inputs[0], node.inputs[1]),
                Op::Reshape { .. } | Op::Transpose { .. } | Op::Concat { .. } | Op::Pad { .. } => {
                    t.layout(g, i)
                }
            };
        }
        t.freeze_value(g.output);
        t.finish(g)
    }

    /// The item each slice of value `v` (along its label axis) belongs to; `None` where a
    /// slice comes from no unit. Empty for a value without labels.
    pub fn slice_items(&self, g: &Graph, v: usize) -> Vec<Option<usize>> {
        let l = &self.labels[v];
        if l.is_empty() {
            return Vec::new();
        }
        let shape = g.shape(v);
        let stride: usize = shape[l.axis + 1..].iter().product();
        let mut out = alloc::vec![None; shape[l.axis]];
        for (e, &u) in l.unit.iter().enumerate() {
            if u != NO_UNIT {
                out[(e / stride) % shape[l.axis]] = Some(self.item_of_unit[u as usize]);
            }
        }
        out
    }
}

struct Tracer {
    units: Vec<Unit>,
    parent: Vec<usize>,
    frozen: Vec<bool>,
    labels: Vec<Labels>,
}

fn positively_homogeneous(a: Activation) -> bool {
    match a {
        // A leaky ReLU's slope is positive (the importer refuses others): f(ax) = a f(x).
        Activation::Identity | Activation::Relu | Activation::LeakyRelu { .. } => true,
        // ReLU6 and friends: homogeneous below the cap, which is where pruned units live.
        Activation::Clip { min, .. } => min == 0.0,
        Activation::Sigmoid | Activation::Tanh => false,
    }
}

impl Tracer {
    fn root(&mut self, mut u: usize) -> usize {
        while self.parent[u] != u {
            self.parent[u] = self.parent[self.parent[u]];
            u = self.parent[u];
        }
        u
    }

    fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.root(a), self.root(b));
        if ra != rb {
            self.parent[rb] = ra;
        }
    }

    fn freeze_value(&mut self, v: usize) {
        let units: Vec<u32> = self.labels[v]
            .unit
            .iter()
            .copied()
            .filter(|&u| u != NO_UNIT)
            .collect();
        for u in units {
            self.frozen[u as usize] = true;
        }
    }

    fn produce(
        &mut self,
        node: usize,
        channels: usize,
        shape: &[usize],
        act: Activation,
    ) -> Labels {
        let first = self.units.len();
        for channel in 0..channels {
            self.units.push(Unit { node, channel });
            self.parent.push(first + channel);
            self.frozen.push(false);
        }
        let inner: usize = shape[2..].iter().product();
        let unit = (0..channels * inner)
            .map(|e| (first + e / inner) as u32)
            .collect();
        Labels {
            unit,
            axis: 1,
            homogeneous: positively_homogeneous(act),
        }
    }

    /// Output channel `c` carries the unit of input channel `c` (pools, batch norm, depthwise).
    fn channelwise(&mut self, g: &Graph, input: usize, out_shape: &[usize]) -> Labels {
        let l = &self.labels[input];
        if l.is_empty() {
            return Labels::default();
        }
        if l.axis != 1 {
            self.freeze_value(input);
            return Labels::default();
        }
        let in_shape = g.shape(input);
        let in_inner: usize = in_shape[2..].iter().product();
        let out_inner: usize = out_shape[2..].iter().product();
        let unit = (0..out_shape[1] * out_inner)
            .map(|e| l.unit[(e / out_inner) * in_inner])
            .collect();
        Labels {
            unit,
            axis: 1,
            homogeneous: l.homogeneous,
        }
    }

    fn add(&mut self, a: usize, b: usize) -> Labels {
        let (la, lb) = (self.labels[a].clone(), self.labels[b].clone());
        match (la.is_empty(), lb.is_empty()) {
            (true, true) => return Labels::default(),
            (false, true) | (true, false) => {
                // A residual channel summed with something no unit controls cannot go.
                self.freeze_value(a);
                self.freeze_value(b);
                return Labels::default();
            }
            (false, false) if la.axis != lb.axis => {
                self.freeze_value(a);
                self.freeze_value(b);
                return Labels::default();
            }
            _ => {}
        }
        for (&ua, &ub) in la.unit.iter().zip(&lb.unit) {
            match (ua == NO_UNIT, ub == NO_UNIT) {
                (false, false) => self.union(ua as usize, ub as usize),
                (false, true) => self.frozen[ua as usize] = true,
                (true, false) => self.frozen[ub as usize] = true,
                (true, true) => {}
            }
        }
        Labels {
            unit: la.unit,
            axis: la.axis,
            homogeneous: false,
        }
    }

    /// Layout operators move elements: find where each output element comes from by
    /// evaluating the operator on element indices.
    fn layout(&mut self, g: &Graph, i: usize) -> Labels {
        let node = &g.nodes[i];
        if node.inputs.iter().all(|&v| self.labels[v].is_empty()) {
            return Labels::default();
        }
        let total: usize = node.inputs.iter().map(|&v| g.values[v].len()).sum();
        let out_shape = g.shape(node.output);
        let fail = |t: &mut Self| {
            for &v in &node.inputs {
                t.freeze_value(v);
            }
            Labels::default()
        };
        // Indices must be exact in f32.
        if total >= 1 << 24 {
            return fail(self);
        }
        let mut offset = 0;
        let mut index_inputs: Vec<Vec<f32>> = Vec::new();
        for &v in &node.inputs {
            let n = g.values[v].len();
            index_inputs.push((offset..offset + n).map(|x| x as f32).collect());
            offset += n;
        }
        let mut source = alloc::vec![0.0f32; out_shape.iter().product()];
        let in_shapes: Vec<&[usize]> = node.inputs.iter().map(|&v| g.shape(v)).collect();
        let inputs: Vec<&[f32]> = index_inputs.iter().map(Vec::as_slice).collect();
        let op = match &node.op {
            Op::Pad { pads, .. } => Op::Pad {
                pads: pads.clone(),
                value: -1.0,
            },
            other => other.clone(),
        };
        ops::eval(&op, &in_shapes, &inputs, out_shape, &mut source);

        let flat: Vec<u32> = node
            .inputs
            .iter()
            .flat_map(|&v| self.labels_or_none(g, v))
            .collect();
        let unit: Vec<u32> = source
            .iter()
            .map(|&s| if s < 0.0 { NO_UNIT } else { flat[s as usize] })
            .collect();
        let homogeneous = node
            .inputs
            .iter()
            .all(|&v| self.labels[v].is_empty() || self.labels[v].homogeneous);
        let in_axis = node
            .inputs
            .iter()
            .find(|&&v| !self.labels[v].is_empty())
            .map_or(1, |&v| self.labels[v].axis);
        let candidate = match &node.op {
            Op::Transpose { perm } => perm.iter().position(|&p| p == in_axis),
            Op::Pad { .. } => Some(in_axis),
            Op::Concat { axis } => {
                let same = node
                    .inputs
                    .iter()
                    .all(|&v| self.labels[v].is_empty() || self.labels[v].axis == in_axis);
                (same && *axis == in_axis).then_some(in_axis)
            }
            _ => None,
        };
        let axis = match candidate {
            Some(a) if uniform_along(&unit, out_shape, a) => Some(a),
            _ if out_shape.len() == 2 => Some(1),
            _ => (1..out_shape.len()).find(|&a| uniform_along(&unit, out_shape, a)),
        };
        match axis {
            Some(axis) => Labels {
                unit,
                axis,
                homogeneous,
            },
            None => fail(self),
        }
    }

    fn labels_or_none(&self, g: &Graph, v: usize) -> Vec<u32> {
        let l = &self.labels[v];
        if l.is_empty() {
            alloc::vec![NO_UNIT; g.values[v].len()]
        } else {
            l.unit.clone()
        }
    }

    fn finish(mut self, g: &Graph) -> Structure {
        let n = self.units.len();
        let roots: Vec<usize> = (0..n).map(|u| self.root(u)).collect();
        let mut item_of_root = BTreeMap::new();
        let mut items: Vec<Item> = Vec::new();
        let mut item_of_unit = alloc::vec![0; n];
        for u in 0..n {
            let item = *item_of_root.entry(roots[u]).or_insert_with(|| {
                items.push(Item {
                    units: Vec::new(),
                    layer: 0,
                    frozen: false,
                });
                items.len() - 1
            });
            items[item].units.push(u);
            items[item].frozen |= self.frozen[u];
            item_of_unit[u] = item;
        }
        let mut layer_of: BTreeMap<Vec<usize>, usize> = BTreeMap::new();
        let mut layers: Vec<Layer> = Vec::new();
        for (i, item) in items.iter_mut().enumerate() {
            let mut producers: Vec<usize> =
                item.units.iter().map(|&u| self.units[u].node).collect();
            producers.sort_unstable();
            producers.dedup();
            let layer = *layer_of.entry(producers.clone()).or_insert_with(|| {
                let name = producers
                    .iter()
                    .map(|&p| g.nodes[p].name.as_str())
                    .collect::<Vec<_>>()
                    .join("+");
                layers.push(Layer {
                    name,
                    producers,
                    items: Vec::new(),
                });
                layers.len() - 1
            });
            item.layer = layer;
            layers[layer].items.push(i);
        }
        Structure {
            units: self.units,
            item_of_unit,
            items,
            layers,
            labels: self.labels,
        }
    }
}

/// Every slice across `axis` carries one label.
fn uniform_along(unit: &[u32], shape: &[usize], axis: usize) -> bool {
    let stride: usize = shape[axis + 1..].iter().product();
    let mut first = alloc::vec![None; shape[axis]];
    unit.iter().enumerate().all(|(e, &u)| {
        let slice = (e / stride) % shape[axis];
        *first[slice].get_or_insert(u) == u
    })
}
