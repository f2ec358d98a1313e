//! One retry delay formula for the whole engine: exponential backoff with "equal jitter".
//!
//! The runner's retry loop and connectors that retry single requests (the `http` reader) use
//! [`backoff`], so a delay means the same everywhere: attempt `n` waits between half and all of
//! `min(base × 2ⁿ⁻¹, max)`. A server's own `Retry-After` still wins where a protocol has one.

use std::time::Duration;

/// The delay before retry `attempt` (1 for the first retry): `cap = min(base × 2^(attempt-1),
/// max)`, then half of `cap` fixed plus `random` (a number in `[0, 1]`, e.g. `rand::random()`)
/// times the other half. `random` outside `[0, 1]` is clamped.
pub fn backoff(base: Duration, max: Duration, attempt: u32, random: f64) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let cap = exp.min(max);
    let half = cap / 2;
    half + half.mul_f64(if random.is_nan() {
        0.0
    } else {
        random.clamp(0.0, 1.0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_half_of_it_random() {
        let ms = Duration::from_millis;
        let max = Duration::from_secs(30);
        assert_eq!(backoff(ms(500), max, 1, 0.0), ms(250));
        assert_eq!(backoff(ms(500), max, 1, 1.0), ms(500));
        assert_eq!(backoff(ms(500), max, 3, 0.0), ms(1000));
        assert_eq!(backoff(ms(500), max, 3, 0.5), ms(1500));
        // Capped at `max`, whatever the attempt (no overflow either).
        assert_eq!(backoff(ms(500), max, 30, 1.0), max);
        assert_eq!(backoff(ms(500), max, u32::MAX, 0.0), max / 2);
        // Attempt 0 is treated as the first.
        assert_eq!(backoff(ms(500), max, 0, 1.0), ms(500));
        assert_eq!(backoff(ms(500), max, 1, 7.0), ms(500));
        assert_eq!(backoff(ms(500), max, 1, f64::NAN), ms(250));
    }
}
