//! The budget search behind `paoding fit`: the least pruning that makes a model fit a board.
//!
//! Pruning is laid out as a *schedule*: a sequence of single-item removals, so that step `k`
//! removes exactly one item more than step `k - 1`. Every size measure (blob bytes, arena
//! bytes, MACs) is monotone along it, so a bisection over `k` finds the smallest step that
//! fits — and step `k - 1` provably does not. Each probe re-prunes from the original model,
//! so no error accumulates. Only the chosen step is compensated and refitted.

use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use crate::blob;
use crate::cost::{ModelCost, WeightDtype};
use crate::error::Result;
use crate::ir::Graph;
use crate::plan::MemoryPlan;
use crate::profile::{self, Budget, Constraint};
use crate::prune::{Pruner, Scope};

/// What a model uses on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Bytes of the runtime model blob (weights and format overhead).
    pub flash_bytes: u64,
    /// Bytes of the activation arena.
    pub ram_bytes: u64,
    /// Multiply-accumulates per inference.
    pub macs: u64,
}

impl Usage {
    /// Exact usage of a checked graph: the blob the runtime would load and its arena.
    pub fn of(g: &Graph) -> Result<Self> {
        let plan = MemoryPlan::new(g);
        Ok(Usage {
            flash_bytes: blob::blob_size(g, &plan)? as u64,
            ram_bytes: plan.arena_bytes as u64,
            macs: ModelCost::with_plan(g, Default::default(), &plan).macs,
        })
    }

    /// Usage of `g` stored as `dtype`. For int8, the blob and arena of its int8 form with f32
    /// input and output ([`crate::quant::nominal`]: the arena exact, the blob within a few
    /// bytes of any calibration's; [`Self::of_quantized`] measures a calibrated one).
    pub fn of_dtype(g: &Graph, dtype: WeightDtype) -> Result<Self> {
        match dtype {
            WeightDtype::F32 => Self::of(g),
            WeightDtype::Int8 => Self::of_quantized(g, &crate::quant::nominal(g)),
        }
    }

    /// Exact usage of the int8 blob of `g` quantized as `q`, with f32 input and output.
    pub fn of_quantized(g: &Graph, q: &crate::quant::Quantized) -> Result<Self> {
        let lowered = blob::QuantizedBlob::new(g, q, paoding_runtime::format::Dtype::F32)?;
        let plan = lowered.plan();
        Ok(Usage {
            flash_bytes: lowered.size(&plan)? as u64,
            ram_bytes: plan.arena_bytes as u64,
            macs: ModelCost::new(g, WeightDtype::Int8).macs,
        })
    }

    /// One verdict per constrained resource.
    pub fn check(&self, budget: &Budget) -> Vec<Constraint> {
        profile::check(budget, self.flash_bytes, self.ram_bytes, self.macs)
    }

    /// Whether every constraint holds.
    pub fn fits(&self, budget: &Budget) -> bool {
        self.check(budget).iter().all(|c| c.fits)
    }
}

/// The order in which items go: `steps[k]` is the layer losing one more item at step `k + 1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// Layer index per step.
    pub steps: Vec<usize>,
    /// Number of layers.
    pub layers: usize,
}

impl Schedule {
    /// Items removed per layer after `k` steps.
    pub fn counts(&self, k: usize) -> Vec<usize> {
        let mut c = alloc::vec![0; self.layers];
        for &l in &self.steps[..k.min(self.steps.len())] {
            c[l] += 1;
        }
        c
    }

    /// Uniform scope: layers lose items in proportion, so that after any step every layer
    /// has lost (to one item) the same fraction.
    pub fn uniform(pruner: &Pruner) -> Self {
        let s = pruner.structure();
        let n = s.layers.len();
        let caps = caps(pruner);
        let mut steps = Vec::new();
        let mut taken = alloc::vec![0usize; n];
        loop {
            // Next: the layer whose next removal comes at the smallest fraction of its width.
            let next = (0..n).filter(|&l| taken[l] < caps[l]).min_by(|&a, &b| {
                let fa = (taken[a] as f64 + 0.5) / s.layers[a].items.len() as f64;
                let fb = (taken[b] as f64 + 0.5) / s.layers[b].items.len() as f64;
                fa.total_cmp(&fb)
            });
            match next {
                Some(l) => {
                    taken[l] += 1;
                    steps.push(l);
                }
                None => break,
            }
        }
        Schedule { steps, layers: n }
    }

    /// Global scope: items go in order of importance per unit of `cost[l]` (what removing one
    /// item of layer `l` saves of the binding resource), within each layer's cap.
    pub fn global(pruner: &Pruner, cost: &[f64]) -> Self {
        let s = pruner.structure();
        let n = s.layers.len();
        let caps = caps(pruner);
        // Within a layer items go by importance; across layers by importance per cost.
        let mut per_layer: Vec<Vec<f64>> = s
            .layers
            .iter()
            .map(|l| {
                let mut v: Vec<f64> = l.prunable(s).map(|i| pruner.importance(i)).collect();
                v.sort_by(|a, b| a.total_cmp(b));
                v
            })
            .collect();
        let mut taken = alloc::vec![0usize; n];
        let mut steps = Vec::new();
        loop {
            let next = (0..n)
                .filter(|&l| taken[l] < caps[l].min(per_layer[l].len()))
                .min_by(|&a, &b| {
                    let ka = per_layer[a][taken[a]] / cost[a].max(1e-12);
                    let kb = per_layer[b][taken[b]] / cost[b].max(1e-12);
                    ka.total_cmp(&kb)
                });
            match next {
                Some(l) => {
                    taken[l] += 1;
                    steps.push(l);
                }
                None => break,
            }
        }
        per_layer.clear();
        Schedule { steps, layers: n }
    }

    /// The schedule for the pruner's scope; `binding` says which resource global costs count.
    pub fn for_scope(pruner: &Pruner, scope: Scope, binding: Resource) -> Result<Self> {
        match scope {
            // The arena is a maximum over execution steps: removing one layer's units only helps
            // while that layer is at the peak, so per-layer savings mislead. Shrinking every
            // layer in proportion lowers the peak wherever it moves.
            Scope::Uniform => Ok(Self::uniform(pruner)),
            Scope::Global if binding == Resource::Ram => Ok(Self::uniform(pruner)),
            Scope::Global => {
                let base = Usage::of(
                    &pruner.preview_sizes(&alloc::vec![0; pruner.structure().layers.len()])?,
                )?;
                let n = pruner.structure().layers.len();
                let mut cost = alloc::vec![0.0; n];
                for (l, c) in cost.iter_mut().enumerate() {
                    let mut counts = alloc::vec![0; n];
                    counts[l] = 1;
                    let u = Usage::of(&pruner.preview_sizes(&counts)?)?;
                    *c = binding.of(&base).saturating_sub(binding.of(&u)) as f64;
                }
                Ok(Self::global(pruner, &cost))
            }
        }
    }
}

/// Most items each layer may lose: the pruner's minimum width and per-layer cap.
fn caps(pruner: &Pruner) -> Vec<usize> {
    let s = pruner.structure();
    s.layers
        .iter()
        .enumerate()
        .map(|(l, _)| {
            let mut full = alloc::vec![0; s.layers.len()];
            full[l] = usize::MAX / 2;
            pruner.clamped_counts(&full)[l]
        })
        .collect()
}

/// A budgeted resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resource {
    /// Flash for the model blob.
    Flash,
    /// RAM for the activation arena.
    Ram,
    /// Compute per inference.
    Macs,
}

impl Resource {
    /// This resource's use.
    pub fn of(self, u: &Usage) -> u64 {
        match self {
            Resource::Flash => u.flash_bytes,
            Resource::Ram => u.ram_bytes,
            Resource::Macs => u.macs,
        }
    }

    /// The constraint most over its budget (the one global allocation should save on).
    pub fn binding(u: &Usage, b: &Budget) -> Self {
        let over = |used: u64, budget: u64| used as f64 / budget.max(1) as f64;
        let mut best = (Resource::Flash, over(u.flash_bytes, b.flash_bytes));
        let ram = over(u.ram_bytes, b.ram_bytes);
        if ram > best.1 {
            best = (Resource::Ram, ram);
        }
        if let Some(m) = b.macs {
            let macs = over(u.macs, m);
            if macs > best.1 {
                best = (Resource::Macs, macs);
            }
        }
        best.0
    }
}

/// The outcome of the search.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchResult {
    /// Smallest step that fits, `None` if even the last does not.
    pub step: Option<usize>,
    /// Steps in the schedule.
    pub total_steps: usize,
    /// Usage at the chosen step (or at the last step, when nothing fits).
    pub usage: Usage,
    /// Usage one step earlier (what did not fit), when the chosen step is not 0.
    pub usage_one_step_less: Option<Usage>,
    /// Number of preview evaluations the bisection made.
    pub evaluations: usize,
}

/// Bisect the schedule for the smallest step whose pruned model fits `budget`.
/// `progress` is told each evaluation (for a progress bar).
pub fn search(
    pruner: &Pruner,
    schedule: &Schedule,
    budget: &Budget,
    dtype: WeightDtype,
    mut progress: impl FnMut(usize, usize),
) -> Result<SearchResult> {
    let total = schedule.steps.len();
    let evaluations = core::cell::Cell::new(0usize);
    let mut usage_at = |k: usize| -> Result<Usage> {
        evaluations.set(evaluations.get() + 1);
        progress(evaluations.get(), total);
        Usage::of_dtype(&pruner.preview_sizes(&schedule.counts(k))?, dtype)
    };
    let first = usage_at(0)?;
    if first.fits(budget) {
        return Ok(SearchResult {
            step: Some(0),
            total_steps: total,
            usage: first,
            usage_one_step_less: None,
            evaluations: 1,
        });
    }
    let last = usage_at(total)?;
    if !last.fits(budget) {
        return Ok(SearchResult {
            step: None,
            total_steps: total,
            usage: last,
            usage_one_step_less: None,
            evaluations: 2,
        });
    }
    // Invariant: `lo` does not fit, `hi` fits.
    let (mut lo, mut hi, mut hi_usage, mut lo_usage) = (0usize, total, last, first);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        let u = usage_at(mid)?;
        if u.fits(budget) {
            hi = mid;
            hi_usage = u;
        } else {
            lo = mid;
            lo_usage = u;
        }
    }
    Ok(SearchResult {
        step: Some(hi),
        total_steps: total,
        usage: hi_usage,
        usage_one_step_less: Some(lo_usage),
        evaluations: evaluations.get(),
    })
}

/// Why a model cannot fit: for each failing constraint, the layers that dominate it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shortfall {
    /// The resource.
    pub resource: Resource,
    /// Use at maximum pruning.
    pub used: u64,
    /// Budget.
    pub budget: u64,
    /// Largest contributors: (what, bytes or MACs).
    pub dominated_by: Vec<(String, u64)>,
    /// What no pruning can change, when it alone breaks the budget.
    pub floor: Option<String>,
}

/// Explain each failing constraint of the maximally pruned graph `g` stored as `dtype`.
pub fn explain(g: &Graph, budget: &Budget, dtype: WeightDtype) -> Result<Vec<Shortfall>> {
    let usage = Usage::of_dtype(g, dtype)?;
    // The values at the peak are named from the f32 plan (an int8 plan also holds the
    // conversions it inserts); in int8 they take a quarter of the bytes.
    let plan = MemoryPlan::new(g);
    let cost = ModelCost::with_plan(g, dtype, &plan);
    let per_value = 4 / dtype.activation_bytes();
    let mut out = Vec::new();
    let top = |mut v: Vec<(String, u64)>| {
        v.sort_by_key(|e| core::cmp::Reverse(e.1));
        v.truncate(3);
        v
    };
    for c in usage.check(budget).iter().filter(|c| !c.fits) {
        let (resource, dominated_by) = match c.resource.as_str() {
            "flash" => (
                Resource::Flash,
                top(cost
                    .nodes
                    .iter()
                    .map(|n| (n.name.clone(), n.weight_bytes))
                    .collect()),
            ),
            "ram" => (
                Resource::Ram,
                top(peak_values(g, &plan)
                    .into_iter()
                    .map(|(name, bytes)| (name, bytes / per_value))
                    .collect()),
            ),
            _ => (
                Resource::Macs,
                top(cost
                    .nodes
                    .iter()
                    .map(|n| (n.name.clone(), n.macs))
                    .collect()),
            ),
        };
        let io = (g.values[g.input].len() * 4) as u64;
        let floor = match resource {
            Resource::Ram if io > c.budget => {
                Some(alloc::format!("the model input alone takes {io} B"))
            }
            _ => None,
        };
        out.push(Shortfall {
            resource,
            used: c.used,
            budget: c.budget,
            dominated_by,
            floor,
        });
    }
    Ok(out)
}

/// The values live at the arena's busiest step, with their bytes.
fn peak_values(g: &Graph, plan: &MemoryPlan) -> Vec<(String, u64)> {
    let steps = g.nodes.len() + 1;
    let live = |s: usize| {
        plan.buffers
            .iter()
            .filter(move |b| b.first_step <= s && s <= b.last_step)
    };
    let peak = (0..=steps)
        .max_by_key(|&s| live(s).map(|b| b.bytes).sum::<usize>())
        .unwrap_or(0);
    let mut out = Vec::new();
    for (v, value) in g.values.iter().enumerate() {
        if let Some(b) = plan.value_buffer[v] {
            let buf = &plan.buffers[b];
            if buf.first_step <= peak
                && peak <= buf.last_step
                && !out.iter().any(|(_, _, ob)| *ob == b)
            {
                let name = if v == g.input {
                    alloc::format!("{} (model input)", value.name)
                } else {
                    value.name.clone()
                };
                out.push((name, buf.bytes as u64, b));
            }
        }
    }
    out.into_iter().map(|(n, b, _)| (n, b)).collect()
}
