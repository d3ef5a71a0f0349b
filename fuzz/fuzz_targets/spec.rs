//! Spec parsing and override application, as `runner run` and `runner validate` do them: the
//! input's lines that start with `#= ` are overrides (`#= jem.optim.lr=0.1`), the whole input is
//! the YAML spec. Any outcome is fine except a panic or a hang.

#![no_main]

use libfuzzer_sys::fuzz_target;
use reprise_core::spec::SpecTree;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(mut tree) = SpecTree::from_str("fuzz.yaml", text) else {
        return;
    };
    for o in text.lines().filter_map(|l| l.strip_prefix("#= ")) {
        let _ = tree.apply_override(o);
    }
    let Ok(header) = tree.header() else {
        return;
    };
    let papers = [
        jem::paper(),
        robust_transfer::paper(),
        deepthin::paper(),
        tsit::paper(),
    ];
    let Some(paper) = papers.iter().find(|p| p.name == header.paper) else {
        return;
    };
    if let Ok(runs) = tree.expand() {
        for (_, run) in runs.iter().take(64) {
            let _ = (paper.validate)(run);
        }
    }
});
