//! The reference f32 interpreter: plain, obviously correct evaluation of the IR. It is the
//! oracle for the runtime's kernels and the engine behind fidelity checks.

use alloc::vec::Vec;

use crate::error::{Error, Result};
use crate::ir::Graph;
use crate::ops;

/// Evaluate the graph on one input (batch 1) and return the output values.
///
/// The graph must have passed [`Graph::check`].
pub fn run(graph: &Graph, input: &[f32]) -> Result<Vec<f32>> {
    let mut values = run_all(graph, input)?;
    Ok(core::mem::take(&mut values[graph.output]))
}

/// Evaluate the graph on one input and return every value it computes, indexed by value id
/// (values no node computes stay empty).
pub fn run_all(graph: &Graph, input: &[f32]) -> Result<Vec<Vec<f32>>> {
    let expected = graph.values[graph.input].len();
    if input.len() != expected {
        return Err(Error::InputLength {
            got: input.len(),
            expected,
            shape: graph.values[graph.input].shape.clone(),
        });
    }
    let mut values: Vec<Vec<f32>> = alloc::vec![Vec::new(); graph.values.len()];
    values[graph.input] = input.to_vec();
    for node in &graph.nodes {
        let out_shape = &graph.values[node.output].shape;
        let mut out = alloc::vec![0.0f32; out_shape.iter().product()];
        let in_shapes: Vec<&[usize]> = node
            .inputs
            .iter()
            .map(|&i| graph.values[i].shape.as_slice())
            .collect();
        let inputs: Vec<&[f32]> = node.inputs.iter().map(|&i| values[i].as_slice()).collect();
        ops::eval(&node.op, &in_shapes, &inputs, out_shape, &mut out);
        values[node.output] = out;
    }
    Ok(values)
}

/// Evaluate the graph on each row of a batch (`inputs.len()` must be a multiple of the input
/// size) and return the outputs, concatenated in the same order.
pub fn run_batch(graph: &Graph, inputs: &[f32]) -> Result<Vec<f32>> {
    let sample = graph.values[graph.input].len();
    if sample == 0 || !inputs.len().is_multiple_of(sample) {
        return Err(Error::InputLength {
            got: inputs.len(),
            expected: sample,
            shape: graph.values[graph.input].shape.clone(),
        });
    }
    let mut out = Vec::with_capacity(inputs.len() / sample * graph.values[graph.output].len());
    for x in inputs.chunks_exact(sample) {
        out.extend(run(graph, x)?);
    }
    Ok(out)
}
