//! Shared pieces of Hull's benchmarks.

/// `a / b`, printed with two decimals; "-" when `b` is zero.
pub fn ratio(a: f64, b: f64) -> String {
    if b == 0.0 {
        "-".to_owned()
    } else {
        format!("{:.2}", a / b)
    }
}
