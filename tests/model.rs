//! Model-based test of the in-memory engine: random sequences of checks,
//! sweeps and clock jumps, compared verdict by verdict with the plain
//! reference implementation in tests/support/model.rs.

#[path = "support/model.rs"]
mod model;

use model::{long_run, op, run, settings};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn engine_agrees_with_the_reference_rules(
        settings in settings(),
        ops in proptest::collection::vec(op(true), 1..300),
    ) {
        run(settings, ops)?;
    }
}

#[test]
fn default_settings_long_run() {
    let (settings, ops) = long_run(true);
    run(settings, ops).unwrap();
}
