//! The static memory plan on real models: never two live values in the same bytes (except
//! the views and in-place writes the plan allows), and an arena at or near the lower bound.

use paoding_cli::import::import_onnx;
use paoding_core::ir::Op;
use paoding_core::plan::MemoryPlan;
use paoding_tests::*;

#[test]
fn plans_are_valid_and_tight() {
    let mut paths: Vec<_> = fixtures()
        .iter()
        .map(|f| fixtures_dir().join(&f.file))
        .collect();
    paths.extend(shared_models());
    for path in paths {
        let g = import_onnx(&path).expect("imports").graph;
        let plan = MemoryPlan::new(&g);
        let name = path.display();
        assert!(plan.arena_bytes >= plan.lower_bound_bytes, "{name}");
        for (i, a) in plan.buffers.iter().enumerate() {
            assert!(
                a.offset + a.bytes <= plan.arena_bytes,
                "{name}: buffer {i} leaves the arena"
            );
            for b in &plan.buffers[i + 1..] {
                let live_together = a.first_step <= b.last_step && b.first_step <= a.last_step;
                let overlap = a.offset < b.offset + b.bytes && b.offset < a.offset + a.bytes;
                assert!(
                    !(live_together && overlap),
                    "{name}: buffers {a:?} and {b:?} collide"
                );
            }
        }
        for v in 0..g.values.len() {
            let b = plan.value_buffer[v].expect("every value has a buffer");
            assert!(
                plan.buffers[b].bytes >= g.values[v].len() * 4,
                "{name}: value {v} does not fit its buffer"
            );
        }
        let residual = g
            .nodes
            .iter()
            .any(|n| matches!(n.op, Op::Add | Op::Concat { .. }));
        let ratio = plan.arena_bytes as f64 / plan.lower_bound_bytes as f64;
        if residual {
            assert!(ratio <= 1.10, "{name}: arena {ratio:.3} x the lower bound");
        } else {
            assert_eq!(
                plan.arena_bytes, plan.lower_bound_bytes,
                "{name}: a chain's arena is its lower bound"
            );
        }
    }
}
