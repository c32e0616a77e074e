//! The HTML page of `paoding report`, from hand-written fit reports and sweeps: what a user
//! sees when a fit went wrong, the budget bars, and the sweep it is given.

use paoding_cli::html::render;
use paoding_cli::sweep::{SweepReport, CSV_HEADER};
use serde_json::{json, Value};

/// A fit report of `model` (unpruned: flash 1000 B, RAM 200 B, 5000 MACs) with `status`,
/// `constraints` and `shortfalls`.
fn fit_report(status: &str, constraints: Value, shortfalls: Value) -> Value {
    json!({
        "schema": "paoding.fit/2",
        "model": "models/kws.onnx",
        "profile": "tiny-board",
        "status": status,
        "message": "a message",
        "original": {"flash_bytes": 1000, "ram_bytes": 200, "macs": 5000},
        "constraints": constraints,
        "step": 3, "total_steps": 10, "evaluations": 4, "binding": "flash",
        "layers": [], "shortfalls": shortfalls,
    })
}

/// A sweep CSV whose original model uses `flash` bytes, 200 B of RAM and 5000 MACs.
fn sweep_csv(flash: u64) -> SweepReport {
    let text = format!(
        "{CSV_HEADER}\noriginal,0,100,0,{flash},200,5000,,100,0.05,90,100,50,0\n\
         merge,0.5,50,50,{},100,2500,,95,0.05,80,88.9,50,0.12\n",
        flash / 2
    );
    SweepReport::from_csv(&text).expect("a sweep CSV")
}

#[test]
fn a_cannot_fit_report_shows_its_shortfalls_as_a_table() {
    let report = fit_report(
        "cannot-fit",
        json!([{"resource": "ram", "used": 7000, "budget": 1024, "headroom": -5976, "fits": false}]),
        json!([{
            "resource": "ram", "used": 7000, "budget": 1024,
            "dominated_by": [
                ["functional_1/activation_7/Relu;functional_1/depthwise_conv2d_3/BiasAdd/ReadVariableOp/resource1", 3500],
                ["functional_1/activation_8/Relu;functional_1/conv2d_4/Conv2D1", 3500]
            ],
            "floor": "the model input alone takes 1960 B"
        }]),
    );
    let page = render(&report, None).expect("renders");
    for text in [
        "<th>use at maximum pruning</th>",
        "<th>over by</th>",
        "<td>7\u{2009}000 B</td>",
        "<td>1\u{2009}024 B</td>",
        "5\u{2009}976 B",
        ">depthwise_conv2d_3</span> (3\u{2009}500 B)",
        ">conv2d_4</span>",
        "the model input alone takes 1960 B",
    ] {
        assert!(page.contains(text), "the page lacks '{text}':\n{page}");
    }
    assert!(
        !page.contains("&quot;resource&quot;") && !page.contains("\"dominated_by\""),
        "no raw JSON:\n{page}"
    );
}

#[test]
fn budget_bars_fill_from_the_left() {
    let report = fit_report(
        "pruned",
        json!([
            {"resource": "flash", "used": 250, "budget": 1000, "headroom": 750, "fits": true},
            {"resource": "ram", "used": 300, "budget": 200, "headroom": -100, "fits": false}
        ]),
        json!([]),
    );
    let page = render(&report, None).expect("renders");
    // A quarter of 120 px from x = 0; beyond the budget, full and red.
    assert!(
        page.contains(r##"<rect x="0" y="0" width="30" height="10" fill="#1f77b4"/>"##),
        "{page}"
    );
    assert!(
        page.contains(r##"<rect x="0" y="0" width="120" height="10" fill="#c62828"/>"##),
        "{page}"
    );
}

#[test]
fn a_csv_sweep_is_charted_under_the_reports_model_name() {
    let report = fit_report("fits-unpruned", json!([]), json!([]));
    let page = render(&report, Some(&sweep_csv(1000))).expect("renders");
    assert!(page.contains("Pruning sweep of kws.onnx"), "{page}");
}

#[test]
fn a_sweep_of_another_model_is_refused() {
    let report = fit_report("fits-unpruned", json!([]), json!([]));
    let err = render(&report, Some(&sweep_csv(4000)))
        .expect_err("another model")
        .to_string();
    assert!(
        err.contains("another model")
            && err.contains("models/kws.onnx")
            && err.contains("flash 1000 B")
            && err.contains("flash 4000 B"),
        "{err}"
    );
}

#[test]
fn a_file_that_is_not_a_fit_report_is_named_plainly() {
    for (report, says) in [
        (
            json!({"schema": "paoding.sweep/1"}),
            "schema 'paoding.sweep/1'",
        ),
        (json!({"model": "x"}), "no schema"),
    ] {
        let err = render(&report, None)
            .expect_err("not a fit report")
            .to_string();
        assert!(err.contains(says) && !err.contains("Some("), "{err}");
    }
}
