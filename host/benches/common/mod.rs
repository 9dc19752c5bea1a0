//! Helpers shared by the benchmarks.

/// Prints the p50 and p99 of `ns` (nanoseconds) in microseconds.
pub fn percentiles(name: &str, mut ns: Vec<u64>) {
    ns.sort_unstable();
    let pct = |p: f64| ns[((ns.len() as f64 * p) as usize).min(ns.len() - 1)] as f64 / 1000.0;
    println!(
        "{name}: p50 {:.1} µs, p99 {:.1} µs ({} runs)",
        pct(0.5),
        pct(0.99),
        ns.len()
    );
}
