//! Where every random stream of a run comes from: a function of the run's seed, the step (or
//! epoch) and the purpose, so that a resumed run draws exactly what an uninterrupted one would,
//! and no generator state has to be saved.

use crate::data::Rng;

/// LibTorch's seed for step `step` of a run seeded `seed` (every LibTorch draw inside the step:
/// dropout, SGLD noise, PGD starts).
pub fn torch_step_seed(seed: u64, step: u64) -> i64 {
    (seed as i64)
        .wrapping_mul(1_000_003)
        .wrapping_add(step as i64)
}

/// Seeds LibTorch's generator for step `step` of a run seeded `seed` ([`torch_step_seed`]).
pub fn seed_torch_for_step(seed: u64, step: u64) {
    tch::manual_seed(torch_step_seed(seed, step));
}

/// The host generator of step `step` (buffer draws, augmentation on the host).
pub fn step_rng(seed: u64, step: u64) -> Rng {
    Rng::new(seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// The generator of the shuffle of epoch `epoch`.
pub fn epoch_rng(seed: u64, epoch: u64) -> Rng {
    Rng::new(seed.wrapping_mul(1_000_003).wrapping_add(epoch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_functions_of_seed_and_step_and_differ_between_them() {
        assert_eq!(torch_step_seed(3, 5), 3 * 1_000_003 + 5);
        assert_eq!(torch_step_seed(u64::MAX, 0), -1_000_003);
        let (mut a, mut b) = (step_rng(7, 10), step_rng(7, 10));
        assert_eq!(a.next_u64(), b.next_u64());
        assert_ne!(step_rng(7, 10).next_u64(), step_rng(7, 11).next_u64());
        assert_ne!(epoch_rng(7, 0).next_u64(), epoch_rng(7, 1).next_u64());
    }
}
